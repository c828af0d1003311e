"""Supabase in the pipeline: the daily job against a real Postgres + pgvector (pgserver), the index
built from the table, the remote fallback, and verified index uploads."""

import contextlib
from datetime import date as Date
from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from thumblab_dagster.definitions import build_definitions
from thumblab_dagster.defs.index_tail import ID_MAP_ALIGNMENT
from thumblab_dagster.defs.resources import (
    ClipEmbedderResource,
    IndexEngineResource,
    IndexUploadResource,
    StorageResource,
    SupabaseResource,
    ThumbnailFetchResource,
    TrendingSourceResource,
)
from thumblab_dagster.defs.supabase.assets import SUPABASE_MIRROR_IN_SYNC
from thumblab_dagster.lib.collections.thumbnails import sample_source
from thumblab_dagster.lib.collections.thumbnails.niches import TIMEZONE
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseRemote
from thumblab_dagster.lib.collections.thumbnails.scoring import UploadScorer, thumbnail_library
from thumblab_dagster.lib.embed.clip import read_embeddings
from thumblab_dagster.lib.engine import index_dir
from thumblab_dagster.lib.query import EmbeddingMismatchError
from thumblab_dagster.lib.stores.supabase_sql import SqlStore, migrate
from thumblab_dagster.lib.stores.upload import FsspecDestination, UploadError, upload_index_dir
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche
from thumblab_dagster_tests.fakes.supabase import FakeSupabaseServer

D_OLD, D = "2026-08-01", "2026-11-19"   # D_OLD is outside D's 90-day window
SECRET = "SECRET-db-password-42"


@pytest.fixture
def secret_db_url(db_url, monkeypatch):
    """The database URL with a password (trust auth ignores it), bound through an env var like in production."""
    migrate(db_url, 512)
    monkeypatch.setenv("TEST_SUPABASE_DB_URL", make_conninfo(db_url, password=SECRET))
    return db_url


def definitions(tmp_path, source="parquet", supabase=None):
    supabase = supabase or SupabaseResource(db_url=dg.EnvVar("TEST_SUPABASE_DB_URL"))
    return build_definitions({
        "storage": StorageResource(data_root=str(tmp_path / "data")),
        "trending_source": TrendingSourceResource(max_results=12),   # the bundled sample: no network
        "embedder": ClipEmbedderResource(pretrained="none", device="cpu", batch_size=8),
        "thumbnail_fetch": ThumbnailFetchResource(max_workers=4),
        "index_engine": IndexEngineResource(source=source, supabase=supabase if source == "supabase" else None),
        "supabase": supabase,
        "index_upload": IndexUploadResource(url=f"file://{tmp_path}/uploads"),
    })


def run(defs, key, instance):
    return defs.resolve_job_def("daily_refresh").execute_in_process(partition_key=key, instance=instance,
                                                                     raise_on_error=False)


def meta(result, asset):
    [mat] = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def checks_of(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def table(url):
    with psycopg.connect(url) as conn:
        return conn.execute("select video_id, niche, title, views_per_hour, collected_at, model, "
                            "embedding::text, partition_date::text from ref_thumbnails order by video_id").fetchall()


def test_daily_refresh_fills_the_table_keeps_it_clean_and_uploads_the_index(tmp_path, secret_db_url, capfd):
    defs = definitions(tmp_path)
    layout = defs.resources["storage"].layout
    with dg.instance_for_test() as instance:
        old = run(defs, f"{D_OLD}|tech", instance)
        assert old.success and meta(old, "supabase_ref_thumbnails")["rows_upserted"] == 12
        result = run(defs, f"{D}|tech", instance)
        assert result.success
        synced = meta(result, "supabase_ref_thumbnails")
        assert (synced["rows_upserted"], synced["rows_deleted"], synced["niche_total"]) == (12, 12, 12)
        assert synced["store"] == "postgres (SUPABASE_DB_URL)"
        assert checks_of(result)[SUPABASE_MIRROR_IN_SYNC] is True and checks_of(result)[ID_MAP_ALIGNMENT] is True

        # one row per indexed video, vectors equal to the parquet's
        frame, vectors, _ = read_embeddings(layout.embeddings("tech", D))
        rows = {r[0]: r for r in table(secret_db_url)}
        assert set(rows) == set(index_dir.load_index_dir(layout.index_dir("tech", D)).ids.tolist())
        for video_id, vector in zip(frame["video_id"], vectors):
            stored = np.asarray(rows[video_id][6].strip("[]").split(","), dtype=np.float32)
            np.testing.assert_allclose(stored, vector, atol=1e-7)
            assert rows[video_id][5] == "ViT-B-32|random-init" and rows[video_id][7] == D

        before = table(secret_db_url)
        again = run(defs, f"{D}|tech", instance)
        assert meta(again, "supabase_ref_thumbnails")["rows_deleted"] == 0
        assert table(secret_db_url) == before  # re-running a partition changes nothing

        uploaded = meta(result, "uploaded_index")
        for folder in (D, "latest"):
            copy = tmp_path / "uploads" / "tech" / folder
            assert index_dir.checksum_problems(copy, index_dir.read_manifest(copy)) == []
        assert "manifest.json" in uploaded["files"] and uploaded["bytes"] > 0

        # the password reaches no log line and no metadata value
        runs = instance.get_runs()
        assert len(runs) == 3
        for run_ in runs:
            for entry in instance.all_logs(run_.run_id):
                assert SECRET not in str(entry)
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_the_index_can_be_built_from_the_table_and_checked_against_it(tmp_path, secret_db_url):
    defs = definitions(tmp_path, source="supabase")
    with dg.instance_for_test() as instance:
        result = run(defs, f"{D}|gaming", instance)
    assert result.success
    built = meta(result, "niche_index")
    assert built["source"] == "postgres (SUPABASE_DB_URL)" and built["ntotal"] == 12
    assert checks_of(result)[ID_MAP_ALIGNMENT] is True
    ids = index_dir.load_index_dir(defs.resources["storage"].layout.index_dir("gaming", D)).ids.tolist()
    assert sorted(ids) == sorted(r[0] for r in table(secret_db_url) if r[1] == "gaming")


@pytest.mark.parametrize("transport", ["postgres", "rest"])
def test_a_late_run_keeps_its_partition_date_for_retention_the_window_and_the_mirror(tmp_path, db_url, monkeypatch,
                                                                                      transport):
    """Each date collected a day and a half late (as a run in the live API's grace day would be): the rows
    carry the date of their partition, not of their run, wherever the table is read."""
    on_time = sample_source.collection_time
    monkeypatch.setattr(sample_source, "collection_time", lambda date: on_time(date) + timedelta(days=1, hours=9))
    edge = (Date.fromisoformat(D) - timedelta(days=89)).isoformat()  # the window's first date: kept
    with contextlib.ExitStack() as stack:
        if transport == "rest":
            fake = stack.enter_context(FakeSupabaseServer("sb_secret_late-run-key"))
            supabase = SupabaseResource(url=fake.base_url, key="sb_secret_late-run-key")
        else:
            migrate(db_url, 512)
            supabase = SupabaseResource(db_url=db_url)
        defs = definitions(tmp_path, source="supabase", supabase=supabase)  # the index is built from the table
        instance = stack.enter_context(dg.instance_for_test())
        for day in (edge, D_OLD):
            assert run(defs, f"{day}|tech", instance).success
        result = run(defs, f"{D}|tech", instance)
        assert result.success
        synced = meta(result, "supabase_ref_thumbnails")
        assert (synced["rows_upserted"], synced["rows_deleted"], synced["niche_total"]) == (12, 12, 24)  # D_OLD's
        assert synced["retention_first_date"] == edge
        assert checks_of(result)[SUPABASE_MIRROR_IN_SYNC] is True
        built = meta(result, "niche_index")
        assert built["ntotal"] == 24 and built["source"] == supabase.store().name
        rows = [(r["partition_date"], r["collected_at"]) for r in fake.table().values()] if transport == "rest" \
            else [(r[7], r[4]) for r in table(db_url)]
        assert {day for day, _ in rows} == {edge, D}
        hobart = [(day, pd.Timestamp(collected).tz_convert(TIMEZONE).date().isoformat()) for day, collected in rows]
        assert all(collected > day for day, collected in hobart)  # every row collected after its partition's day


def test_without_supabase_the_definitions_are_the_embedded_default():
    from thumblab_dagster.defs.resources import resources_from_env

    resources = resources_from_env({})
    assert "supabase" not in resources and "index_upload" not in resources
    defs = build_definitions(resources)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "thumbnails"}
    assert keys == {"trending_videos", "thumbnail_embeddings", "niche_index", "published_index", "index_stats"}
    with pytest.raises(ValueError, match="THUMBLAB_INDEX_SOURCE=supabase needs SUPABASE_DB_URL"):
        resources_from_env({"THUMBLAB_INDEX_SOURCE": "supabase"})


def test_a_missing_local_index_falls_back_to_the_table_and_says_so(tmp_path, db_url):
    from thumblab_dagster.lib.stores.supabase import to_records

    d = 32
    migrate(db_url, d)
    vectors = clustered(300, d=d, seed=4)
    ids = [f"v{i:03d}" for i in range(300)]
    frame = pd.DataFrame({"video_id": ids, "niche": "tech", "title": ids, "views_per_hour": 1.0,
                          "collected_at": pd.Timestamp("2026-11-19T03:00Z")})
    with SqlStore(db_url) as store:
        store.upsert(to_records(frame, vectors, "ViT-B-32|random-init", partition_date=D))
        remote = thumbnail_library(tmp_path / "empty", remote=SupabaseRemote(store))
        publish_niche(tmp_path / "pub", "tech", vectors, ids, snapshot=D)
        local = thumbnail_library(tmp_path / "pub")
        query = clustered(5, d=d, seed=9)
        for q in query:
            answer = remote.similarity_percentile(q, "tech")
            assert answer.source == "remote" and "no index for niche 'tech'" in answer.reason
            assert "postgres (SUPABASE_DB_URL)" in answer.reason
            # the same rows give the same percentile, locally or through the table
            assert abs(answer.percentile - local.similarity_percentile(q, "tech").percentile) <= 100 / 300
            found = remote.similar(q, "tech", k=5)
            assert found.source == "remote" and [f["video_id"] for f in found] == \
                [f["video_id"] for f in local.similar(q, "tech", k=5)]
        # an upload from another model is refused before the table is asked (same dim or not)
        UploadScorer(remote, clip_with(loaded=False)).check_model("tech")
        mismatch = r"embedded with ViT-B-32\|random-init, the query embedder is ViT-B-32\|openai"
        with pytest.raises(EmbeddingMismatchError, match=mismatch):
            UploadScorer(remote, clip_with(loaded=True)).check_model("tech")


def clip_with(loaded: bool):
    """A LoadedClip record without a network: check_model reads only its weights."""
    import threading

    from thumblab_dagster.lib.embed.clip import LoadedClip, WeightsInfo

    weights = WeightsInfo("ViT-B-32", "openai" if loaded else "none", loaded, "openai" if loaded else "random-init")
    return LoadedClip(model=None, preprocess=None, tokenizer=None, device="cpu", dim=32, weights=weights,
                      lock=threading.Lock())


class FailingOn(FsspecDestination):
    def __init__(self, url, name):
        super().__init__(url)
        self.fail_name = name

    def put(self, local, path):
        if path.endswith(self.fail_name):
            raise UploadError(f"uploading {path} failed (test)")
        super().put(local, path)


def test_a_failed_upload_leaves_the_previous_latest_copy_intact(tmp_path):
    vectors = clustered(50, d=16)
    publish_niche(tmp_path / "pub", "tech", vectors, [f"a{i}" for i in range(50)], snapshot="2026-11-18")
    first = tmp_path / "builds" / "tech-2026-11-18"
    url = f"file://{tmp_path}/up"
    upload_index_dir(first, FsspecDestination(url), "tech", "2026-11-18")
    latest = tmp_path / "up" / "tech" / "latest"
    before = {p.name: p.read_bytes() for p in latest.iterdir()}
    publish_niche(tmp_path / "pub", "tech", vectors, [f"b{i}" for i in range(50)], snapshot="2026-11-19")
    with pytest.raises(UploadError, match="ids.npy"):
        upload_index_dir(tmp_path / "builds" / "tech-2026-11-19", FailingOn(url, "ids.npy"), "tech", "2026-11-19")
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == before
