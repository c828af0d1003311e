"""RestStore (supabase-py over the REST gateway) against the loopback fake of PostgREST + Storage."""

from __future__ import annotations

import hashlib
import logging
from datetime import date, datetime, timedelta, timezone

import httpx
import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.stores.supabase import COLUMNS, MATCH_COLUMNS, parse_vector, to_records
from thumblab_dagster.lib.stores.supabase_rest import RestStore, RestStoreError
from thumblab_dagster_tests.fakes.supabase import FakeSupabaseServer

KEY = "sb_secret_TEST-key-0123456789abcdef"
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DAY = T0.date()


@pytest.fixture
def fake():
    with FakeSupabaseServer(KEY) as state:
        yield state


@pytest.fixture
def store(fake):
    with RestStore(fake.base_url, KEY, backoff_s=0.0) as s:  # backoff 0: retries without sleeping
        yield s


def records(n: int, niche: str = "gaming", prefix: str = "v", start: datetime = T0, dim: int = 4, seed: int = 0,
            step: timedelta = timedelta(minutes=1), day: date | None = None):
    """n rows collected from ``start`` every ``step``, for partition ``day`` (default: each row's UTC day)."""
    frame = pd.DataFrame({
        "video_id": [f"{prefix}{i:05d}" for i in range(n)],
        "niche": niche,
        "title": [f"title {i}" for i in range(n)],
        "thumbnail_url": [f"https://i.ytimg.com/vi/{prefix}{i}/hq.jpg" for i in range(n)],
        "views_per_hour": [float(i) + 0.25 for i in range(n)],
        "view_count": [None if i % 3 == 0 else 1000 + i for i in range(n)],
        "published_at": [None if i % 4 == 0 else start - timedelta(hours=i, microseconds=123) for i in range(n)],
        "collected_at": [start + i * step for i in range(n)],
    })
    frame["partition_date"] = day or [t.date() for t in frame["collected_at"]]
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return to_records(frame, vectors, "clip-test"), vectors


def table_requests(fake, method: str) -> list[dict]:
    return [r for r in fake.requests if r["method"] == method and r["path"] == "/rest/v1/ref_thumbnails"]


def test_upsert_in_batches_sends_postgrest_upserts(fake, store):
    recs, vectors = records(12)
    assert store.upsert(recs, batch_size=5) == 12
    posts = table_requests(fake, "POST")
    assert [len(r["json"]) for r in posts] == [5, 5, 2]
    for r in posts:
        assert r["query"]["on_conflict"] == ["video_id"]
        prefer = {p.strip() for p in r["headers"]["prefer"].split(",")}
        assert {"resolution=merge-duplicates", "return=minimal"} <= prefer  # minimal: no embeddings echoed back
        assert r["headers"]["apikey"] == KEY and r["headers"]["authorization"] == f"Bearer {KEY}"
        row = r["json"][0]
        assert isinstance(row["embedding"], str) and row["embedding"].startswith("[")
        assert datetime.fromisoformat(row["collected_at"]).tzinfo is not None
        assert row["partition_date"] == "2024-05-01"
    assert len(fake.rows) == 12
    assert np.array_equal(fake.rows["v00007"]["embedding"], vectors[7])


def test_upsert_is_idempotent_and_last_duplicate_wins(fake, store):
    recs, _ = records(7)
    store.upsert(recs, batch_size=3)
    first = fake.table()
    store.upsert(recs, batch_size=4)
    assert fake.table() == first
    # the same video twice in one call: one statement may not touch a row twice in Postgres (21000)
    changed = dict(recs[2], title="renamed")
    assert store.upsert([recs[2], changed], batch_size=10) == 1
    assert fake.rows["v00002"]["title"] == "renamed"
    assert store.count("gaming") == 7


def test_delete_before_filters_by_partition_date_and_returns_count(fake, store):
    # one partition a day, each collected 100 days late: the wall clock must not matter
    gaming, _ = records(6, start=T0 + timedelta(days=100), step=timedelta(days=1))
    for i, r in enumerate(gaming):
        r["partition_date"] = DAY + timedelta(days=i)
    store.upsert(gaming + records(3, niche="music", prefix="m", day=DAY - timedelta(days=30))[0])
    deleted = store.delete_before("gaming", DAY + timedelta(days=4))
    assert deleted == 4
    (req,) = table_requests(fake, "DELETE")
    assert req["query"]["niche"] == ["eq.gaming"]
    assert req["query"]["partition_date"] == ["lt.2024-05-05"] and "collected_at" not in req["query"]
    assert "count=exact" in req["headers"]["prefer"]
    assert sorted(fake.rows) == ["m00000", "m00001", "m00002", "v00004", "v00005"]
    assert store.delete_before("gaming", DAY) == 0
    with pytest.raises(TypeError, match="must be a date"):
        store.delete_before("gaming", T0)


def test_count_uses_head_with_exact_count(fake, store):
    store.upsert(records(5)[0] + records(2, niche="music", prefix="m")[0])
    assert store.count("gaming") == 5
    assert store.count("music") == 2
    assert store.count("nobody") == 0
    heads = table_requests(fake, "HEAD")
    assert len(heads) == 3 and all("count=exact" in r["headers"]["prefer"] for r in heads)


def test_ids_between_pages_past_max_rows(fake, store):
    inside, _ = records(2500, step=timedelta(seconds=1))
    before, _ = records(5, prefix="b", start=T0 - timedelta(days=1))
    after, _ = records(5, prefix="z", start=T0 + timedelta(days=1))
    other, _ = records(5, niche="music", prefix="m")
    store.upsert(inside + before + after + other, batch_size=1000)
    fake.requests.clear()
    assert store.ids_between_dates("gaming", DAY, DAY) == {r["video_id"] for r in inside}
    gets = table_requests(fake, "GET")
    assert len(gets) == 4  # 1000 + 1000 + 500, then an empty page ends it
    assert all(r["query"]["limit"] == ["1000"] and r["query"]["order"] == ["video_id.asc"] for r in gets)
    assert sorted(gets[0]["query"]["partition_date"]) == ["gte.2024-05-01", "lte.2024-05-01"]
    assert store.ids_between_dates("gaming", DAY - timedelta(days=89), DAY) == {r["video_id"] for r in inside + before}
    # a project whose max-rows is below our page size: short pages are not the end
    fake.max_rows = 300
    assert store.ids_between_dates("gaming", DAY, DAY + timedelta(days=1)) == {r["video_id"] for r in inside + after}


def test_fake_caps_offset_pages_like_postgrest(fake, store):
    store.upsert(records(1500, step=timedelta(seconds=1))[0], batch_size=1000)
    query = store._client.table("ref_thumbnails").select("video_id", count="exact").order("video_id")
    page = query.range(0, 4999).execute()
    assert len(page.data) == 1000 and page.count == 1500  # max-rows wins over the requested range
    page = store._client.table("ref_thumbnails").select("video_id").order("video_id").range(1000, 1999).execute()
    assert [r["video_id"] for r in page.data][:1] == ["v01000"] and len(page.data) == 500
    # the Range header (limit/offset in the query string win over it), and the 401 for a request without a key
    url = f"{fake.base_url}/rest/v1/ref_thumbnails?select=video_id&order=video_id.asc"
    auth = {"apikey": KEY, "Authorization": f"Bearer {KEY}"}
    answer = httpx.get(url, headers={**auth, "Range": "10-19"})
    assert answer.headers["content-range"] == "10-19/*" and answer.json()[0] == {"video_id": "v00010"}
    answer = httpx.get(url + "&limit=2", headers={**auth, "Range": "10-19"})
    assert answer.headers["content-range"] == "0-1/*" and len(answer.json()) == 2
    answer = httpx.get(url)
    assert answer.status_code == 401 and answer.json()["code"] == "PGRST301"


def test_match_and_reference_scores_go_through_rpc(fake, store):
    recs, vectors = records(30, dim=8)
    lonely, _ = records(1, niche="solo", prefix="s", dim=8)
    store.upsert(recs + lonely)
    query = np.random.default_rng(9).normal(size=8).astype(np.float32)

    hits = store.match(query, "gaming", 5)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ (query / np.linalg.norm(query))
    expected = np.argsort(-sims)[:5]
    assert [h["video_id"] for h in hits] == [recs[i]["video_id"] for i in expected]
    assert np.allclose([h["similarity"] for h in hits], sims[expected], atol=1e-6)
    assert all(list(h) == MATCH_COLUMNS for h in hits)

    scores = store.reference_scores("gaming", 3, 10)
    assert scores.dtype == np.float32 and scores.shape == (10,)
    assert np.all((scores > -1.0) & (scores <= 1.0))
    assert store.reference_scores("solo", 3, 10).shape == (0,)  # a lone row scores null: dropped

    rpcs = [r for r in fake.requests if r["path"].startswith("/rest/v1/rpc/")]
    match_req = next(r for r in rpcs if r["path"].endswith("/match_ref_thumbnails"))
    assert match_req["method"] == "POST"
    assert set(match_req["json"]) == {"query_embedding", "match_niche", "match_count"}
    assert np.array_equal(parse_vector(match_req["json"]["query_embedding"]), query)
    ref_req = next(r for r in rpcs if r["path"].endswith("/ref_thumbnails_reference_scores"))
    assert ref_req["json"] == {"match_niche": "gaming", "match_k": 3, "sample_size": 10}


def test_rows_round_trip(fake, store):
    recs, vectors = records(25, dim=16)
    recs[3]["collected_at"] = recs[3]["collected_at"] + timedelta(microseconds=654321)
    store.upsert(recs + records(4, niche="music", prefix="m", dim=16)[0])
    frame, got = store.rows_between_dates("gaming", DAY, DAY)
    assert list(frame.columns) == COLUMNS and list(frame["video_id"]) == sorted(r["video_id"] for r in recs)
    assert set(frame["partition_date"]) == {"2024-05-01"}
    assert got.dtype == np.float32 and got.shape == (25, 16)
    assert np.allclose(got, vectors, rtol=1e-7, atol=0)  # float32 survives pgvector's text form
    expected = pd.DataFrame(recs)
    for column in ("collected_at", "published_at"):
        assert str(frame[column].dt.tz) == "UTC"
        want = pd.to_datetime(expected[column], utc=True)
        assert frame[column].isna().equals(want.isna())
        assert (frame[column][want.notna()] == want[want.notna()]).all()
    assert frame["view_count"].isna().sum() == sum(r["view_count"] is None for r in recs)
    assert frame.loc[1, "title"] == "title 1" and frame.loc[1, "views_per_hour"] == 1.25
    empty, none = store.rows_between_dates("gaming", DAY - timedelta(days=2), DAY - timedelta(days=1))
    assert empty.empty and list(empty.columns) == COLUMNS and none.shape[0] == 0


def test_upload_file_is_verified(fake, store, tmp_path):
    local = tmp_path / "index.faiss"
    local.write_bytes(bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n")
    result = store.upload_file("indexes", "gaming/2024-05-01/index.faiss", local)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert result == {"bucket": "indexes", "path": "gaming/2024-05-01/index.faiss", "size": local.stat().st_size,
                      "sha256": digest}
    assert fake.objects["indexes", "gaming/2024-05-01/index.faiss"][0] == local.read_bytes()
    up, down = fake.requests
    assert up["method"] == "POST" and up["path"] == "/storage/v1/object/indexes/gaming/2024-05-01/index.faiss"
    assert up["headers"]["x-upsert"] == "true" and up["headers"]["apikey"] == KEY
    assert down["method"] == "GET" and down["path"] == up["path"]
    assert store.download("indexes", "gaming/2024-05-01/index.faiss") == local.read_bytes()
    store.upload_file("indexes", "gaming/2024-05-01/index.faiss", local)  # overwriting is fine

    fake.corrupt_uploads = True
    with pytest.raises(RestStoreError, match=r"indexes/gaming/latest/index\.faiss does not match index\.faiss"):
        store.upload_file("indexes", "gaming/latest/index.faiss", local)
    with pytest.raises(RestStoreError, match="HTTP 404"):
        store.download("indexes", "missing.bin")


def test_wrong_key_fails_without_leaking_it(fake):
    wrong = "sb_secret_WRONG-key-fedcba9876543210"
    with RestStore(fake.base_url, wrong, backoff_s=0.0) as bad:
        assert wrong not in repr(bad) and KEY not in repr(bad)
        for call in (lambda: bad.count("gaming"), lambda: bad.upsert(records(2)[0]),
                     lambda: bad.ids_between_dates("gaming", DAY, DAY),
                     lambda: bad.match(np.ones(4, np.float32), "gaming", 3), lambda: bad.download("indexes", "x")):
            with pytest.raises(RestStoreError) as info:
                call()
            assert info.value.status == 401 and "HTTP 401" in str(info.value)
            assert wrong not in str(info.value) and fake.base_url not in str(info.value)
            assert info.value.__cause__ is None and info.value.__suppress_context__
    assert fake.rows == {}
    with pytest.raises(RestStoreError) as info:
        RestStore("ftp://example.com", wrong)
    assert wrong not in str(info.value)


def test_transient_failures_are_retried(fake, store):
    recs, _ = records(6)
    fake.fail_next(1, "drop")
    fake.fail_next(1, "503")
    assert store.upsert(recs, batch_size=10) == 6  # the stored-times read before the POST is retried
    assert len(table_requests(fake, "GET")) == 3 and len(table_requests(fake, "POST")) == 1
    assert len(fake.rows) == 6
    fake.fail_next(2, "503")
    assert store.count("gaming") == 6
    fake.fail_next(3, "503")  # retries=2: the third failure surfaces
    with pytest.raises(RestStoreError, match="HTTP 503.*PGRST000"):
        store.ids_between_dates("gaming", DAY, DAY)
    fake.fail_next(3, "drop")
    with pytest.raises(RestStoreError, match="RemoteProtocolError"):
        store.count("gaming")


def test_key_never_reaches_logs_or_urls(fake, store, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    recs, vectors = records(5)
    store.upsert(recs)
    store.count("gaming")
    store.ids_between_dates("gaming", DAY, DAY)
    store.rows_between_dates("gaming", DAY, DAY)
    store.match(vectors[0], "gaming", 2)
    store.reference_scores("gaming", 2, 5)
    store.delete_before("gaming", DAY)
    (tmp_path / "f.bin").write_bytes(b"abc")
    store.upload_file("indexes", "f.bin", tmp_path / "f.bin")
    fake.fail_next(1, "503")
    store.count("gaming")  # a retry logs a warning
    with RestStore(fake.base_url, KEY + "x", backoff_s=0.0) as bad, pytest.raises(RestStoreError):
        bad.count("gaming")
    assert any(r.name == "httpx" for r in caplog.records)  # httpx did log its request lines
    assert KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert all(KEY not in r["raw_path"] for r in fake.requests)  # the key rides in headers only
    # HTTP/2's hpack logs header values (the apikey among them) at DEBUG: the store speaks HTTP/1.1
    assert store._http._transport._pool._http2 is False


def test_an_index_directory_goes_to_supabase_storage_dated_then_latest(fake, tmp_path):
    from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
    from thumblab_dagster.lib.engine.build import build_index_dir
    from thumblab_dagster.lib.stores.upload import destination_for, upload_index_dir

    vectors = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    build_index_dir(tmp_path / "idx", vectors, [f"v{i}" for i in range(20)], factory="Flat")
    destination = destination_for("supabase://indexes/thumblab", SupabaseSettings(fake.base_url, KEY))
    result = upload_index_dir(tmp_path / "idx", destination, "gaming", "2024-05-01")
    assert result.latest == "supabase://indexes/thumblab/gaming/latest/"
    for folder in ("2024-05-01", "latest"):
        for name in ("index.faiss", "ids.npy", "manifest.json"):
            assert fake.objects["indexes", f"thumblab/gaming/{folder}/{name}"][0] == (tmp_path / "idx" / name).read_bytes()
    uploads = [r["path"] for r in fake.requests if r["method"] == "POST"]
    assert uploads[2].endswith("2024-05-01/manifest.json") and uploads[-1].endswith("latest/manifest.json")
    assert KEY not in repr(destination.__dict__)


def test_the_library_falls_back_to_match_ref_thumbnails_over_rpc(fake, store, tmp_path):
    from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseRemote
    from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library

    recs, vectors = records(40, niche="gaming", dim=8)
    store.upsert(recs)
    library = thumbnail_library(tmp_path, remote=SupabaseRemote(store))
    found = library.similar(vectors[3], "gaming", k=3)
    assert found.source == "remote" and found[0]["video_id"] == "v00003"
    assert "searched by supabase (SUPABASE_URL)" in found.reason
    score = library.similarity_percentile(vectors[3], "gaming")
    assert score.source == "remote" and 0 <= score.percentile <= 100
    rpc = [r for r in fake.requests if r["path"].startswith("/rest/v1/rpc/")]
    assert {r["path"] for r in rpc} == {"/rest/v1/rpc/match_ref_thumbnails",
                                        "/rest/v1/rpc/ref_thumbnails_reference_scores"}
    assert library.similarity_percentile(vectors[3], "gaming", weight="views_per_hour").is_default


def test_an_older_collection_never_rolls_a_row_back(fake, store):
    new, _ = records(4, start=T0 + timedelta(days=30), seed=1)
    old, _ = records(4, start=T0, seed=2)
    store.upsert(new)
    before = fake.table()
    store.upsert(old)  # a backfill of an older date
    assert fake.table() == before
    in_filter = [r for r in fake.requests if r["method"] == "GET" and "video_id" in r["query"]]
    assert in_filter and in_filter[-1]["query"]["video_id"][0].startswith("in.(")
    assert in_filter[-1]["query"]["select"] == ["video_id,partition_date,collected_at"]
    # a late run of an older date: collected after the stored rows, but for an older partition
    late, _ = records(4, start=T0 + timedelta(days=60), seed=3, day=DAY + timedelta(days=29))
    store.upsert(late)
    assert fake.table() == before
    # a re-run of the same partition collected later wins; an earlier collection of it does not
    rerun, _ = records(2, start=T0 + timedelta(days=30, hours=1), seed=4, day=DAY + timedelta(days=30))
    store.upsert(rerun)
    assert fake.table()["v00000"] != before["v00000"] and fake.table()["v00003"] == before["v00003"]
    after_rerun = fake.table()
    earlier, _ = records(2, start=T0 + timedelta(days=29), seed=5, day=DAY + timedelta(days=30))
    store.upsert(earlier)
    assert fake.table() == after_rerun


def test_a_late_run_keeps_its_partition_date(fake, store):
    from thumblab_dagster.lib.collections.thumbnails.sync import first_date

    d = date(2024, 5, 1)
    late, _ = records(3, start=T0 + timedelta(days=40), day=d)  # date D collected 40 days late
    gone, _ = records(1, prefix="g", start=T0, day=d - timedelta(days=90))
    store.upsert(late + gone)
    assert {r["partition_date"] for r in fake.table().values()} == {"2024-05-01", "2024-02-01"}
    window = date.fromisoformat(first_date(d.isoformat(), 90))
    assert store.ids_between_dates("gaming", window, d) == {r["video_id"] for r in late}
    assert store.delete_before("gaming", window) == 1
    frame, _ = store.rows_between_dates("gaming", window, d)
    assert list(frame["partition_date"]) == ["2024-05-01"] * 3


def test_the_fake_speaks_postgrest_for_dates(fake, store):
    store.upsert(records(2)[0])
    url = f"{fake.base_url}/rest/v1/ref_thumbnails?select=video_id,partition_date"
    auth = {"apikey": KEY, "Authorization": f"Bearer {KEY}"}
    answer = httpx.get(url + "&partition_date=gte.2024-05-01&partition_date=lte.2024-05-01", headers=auth)
    assert answer.json() == [{"video_id": "v00000", "partition_date": "2024-05-01"},
                             {"video_id": "v00001", "partition_date": "2024-05-01"}]
    assert httpx.get(url + "&partition_date=gt.2024-05-01", headers=auth).json() == []
    answer = httpx.get(url + "&partition_date=gte.2024-13-01", headers=auth)
    assert answer.status_code == 400 and answer.json()["code"] == "22007"
    row = {k: v for k, v in fake.table()["v00000"].items() if k != "partition_date"}
    answer = httpx.post(f"{fake.base_url}/rest/v1/ref_thumbnails", json=[dict(row, video_id="x")],
                        headers={**auth, "Prefer": "resolution=merge-duplicates"})
    assert answer.status_code == 400 and answer.json()["code"] == "23502"  # partition_date is not null


def test_newest_model_reads_the_latest_row(fake, store):
    assert store.newest_model("gaming") is None
    old, _ = records(3, start=T0 + timedelta(days=5), day=DAY)  # a late run: collected last, for the oldest date
    new, _ = records(2, prefix="w", start=T0 + timedelta(days=1))
    for r in new:
        r["model"] = "ViT-L-14|openai"
    store.upsert(old + new)
    assert store.newest_model("gaming") == "ViT-L-14|openai"
    last = [r for r in fake.requests if r["method"] == "GET"][-1]["query"]
    assert last["order"] == ["partition_date.desc,collected_at.desc"] and last["limit"] == ["1"]
