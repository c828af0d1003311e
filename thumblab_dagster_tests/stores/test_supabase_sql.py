"""SqlStore and migrate against a real Postgres + pgvector (pgserver, unix socket, one server per module)."""

import hashlib
import itertools
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import psycopg
import pytest

from thumblab_dagster.lib.stores.supabase import COLUMNS, to_records
from thumblab_dagster.lib.stores.supabase_sql import SqlStore, StoreError, migrate

DIM = 16
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
_db_numbers = itertools.count()


@pytest.fixture
def store(db_url):
    migrate(db_url, DIM)
    with SqlStore(db_url) as s:
        yield s


def make_records(ids, niche, collected_at, seed=0, views=None):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "video_id": ids, "niche": niche, "title": [f"title {i}" for i in ids],
        "thumbnail_url": [f"https://i.ytimg.com/vi/{i}/hq.jpg" for i in ids],
        "views_per_hour": views if views is not None else rng.uniform(1, 1000, len(ids)),
        "view_count": rng.integers(1, 10**9, len(ids)), "published_at": T0 - timedelta(days=3),
        "channel_title": "chan", "description": None, "collected_at": collected_at,
    })
    return to_records(frame, rng.normal(size=(len(ids), DIM)).astype(np.float32), model="clip-test")


def dump(url):
    with psycopg.connect(url) as conn:
        return conn.execute("select *, embedding::text from ref_thumbnails order by video_id").fetchall()


def table_ids(url):
    return [row[0] for row in dump(url)]


def schema_snapshot(url):
    with psycopg.connect(url) as conn:
        return {
            "indexes": conn.execute("select indexname, indexdef from pg_indexes where tablename = 'ref_thumbnails' "
                                    "order by indexname").fetchall(),
            "functions": conn.execute(
                "select oid, proname, pg_get_function_arguments(oid), prosrc, proconfig from pg_proc "
                "where proname in ('match_ref_thumbnails', 'ref_thumbnails_reference_scores') order by proname"
            ).fetchall(),
            "columns": conn.execute("select attname, format_type(atttypid, atttypmod), attnotnull from pg_attribute "
                                    "where attrelid = 'ref_thumbnails'::regclass and attnum > 0 order by attnum").fetchall(),
        }


def test_migrate_is_idempotent_and_refuses_another_dim(db_url):
    assert migrate(db_url, DIM)["created"] is True
    first = schema_snapshot(db_url)
    again = migrate(db_url, DIM)
    assert again["dim"] == DIM and again["created"] is False
    assert schema_snapshot(db_url) == first

    indexes = {name: definition.lower() for name, definition in first["indexes"]}
    assert "using hnsw (embedding vector_cosine_ops)" in indexes["ref_thumbnails_embedding_idx"]
    assert "(niche)" in indexes["ref_thumbnails_niche_idx"]
    assert "(collected_at)" in indexes["ref_thumbnails_collected_at_idx"]
    assert [f[1] for f in first["functions"]] == ["match_ref_thumbnails", "ref_thumbnails_reference_scores"]
    assert all(f[4] == ["hnsw.ef_search=200"] for f in first["functions"])
    assert ("embedding", f"vector({DIM})", True) in first["columns"]

    with pytest.raises(ValueError, match=rf"{DIM}-dimensional.*not 32.*--dim {DIM}.*drop the table"):
        migrate(db_url, 32)
    assert schema_snapshot(db_url) == first  # the refused migration touched nothing


def test_upsert_is_idempotent_updates_and_round_trips(store, db_url):
    ids = [f"v{i:03d}" for i in range(7)]
    records = make_records(ids, "gaming", T0) + make_records(["w1", "w2", "w3"], "cooking", T0, seed=1)
    assert store.upsert(records, batch_size=3) == 10
    before = dump(db_url)
    assert store.upsert(records, batch_size=3) == 10
    assert dump(db_url) == before
    assert store.count("gaming") == 7 and store.count("cooking") == 3
    assert store.ids_between("gaming", T0, T0 + timedelta(seconds=1)) == set(ids)
    assert store.ids_between("gaming", T0 + timedelta(microseconds=1), T0 + timedelta(days=1)) == set()

    frame, vectors = store.rows("gaming", T0, T0 + timedelta(days=1))
    assert list(frame.columns) == COLUMNS and list(frame["video_id"]) == ids
    expected = {r["video_id"]: r for r in records}
    for row, vector in zip(frame.to_dict("records"), vectors):
        want = expected[row["video_id"]]
        assert row["title"] == want["title"] and row["view_count"] == want["view_count"]
        assert row["views_per_hour"] == pytest.approx(want["views_per_hour"])
        assert row["collected_at"] == pd.Timestamp(T0) and row["model"] == "clip-test"
        assert vector.dtype == np.float32
        np.testing.assert_allclose(vector, want["embedding"], rtol=1e-6)

    changed = dict(records[2], views_per_hour=12345.5)
    assert store.upsert([changed]) == 1
    after = {row[0]: row for row in dump(db_url)}
    assert after["v002"][COLUMNS.index("views_per_hour")] == 12345.5
    assert [row for row in dump(db_url) if row[0] != "v002"] == [row for row in before if row[0] != "v002"]

    empty, no_vectors = store.rows("gaming", T0 - timedelta(days=9), T0 - timedelta(days=8))
    assert empty.empty and list(empty.columns) == COLUMNS and no_vectors.shape[0] == 0
    assert store.upsert([]) == 0


def test_retention_deletes_exactly_the_niches_old_rows(store, db_url):
    cutoff = T0
    store.upsert(make_records(["old1"], "gaming", cutoff - timedelta(days=2))
                 + make_records(["old2"], "gaming", cutoff - timedelta(microseconds=1), seed=1)
                 + make_records(["edge"], "gaming", cutoff, seed=2)
                 + make_records(["new"], "gaming", cutoff + timedelta(days=1), seed=3)
                 + make_records(["other"], "cooking", cutoff - timedelta(days=30), seed=4))
    assert store.delete_older_than("gaming", cutoff) == 2
    assert table_ids(db_url) == ["edge", "new", "other"]
    assert store.delete_older_than("gaming", cutoff) == 0


def test_match_agrees_with_exact_cosine_ranking(store):
    gaming = make_records([f"g{i:02d}" for i in range(40)], "gaming", T0, seed=5)
    store.upsert(gaming + make_records([f"c{i:02d}" for i in range(20)], "cooking", T0, seed=6))
    query = np.random.default_rng(7).normal(size=DIM).astype(np.float32)

    got = store.match(query, "gaming", 10)
    vectors = np.stack([r["embedding"] for r in gaming]).astype(np.float64)
    sims = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = np.argsort(-sims)[:10]
    assert [m["video_id"] for m in got] == [gaming[i]["video_id"] for i in order]
    np.testing.assert_allclose([m["similarity"] for m in got], sims[order], atol=1e-5)
    assert all(set(m) == {"video_id", "similarity", "title", "thumbnail_url", "views_per_hour"} for m in got)
    assert got[0]["title"] == gaming[order[0]]["title"]
    assert store.match(query, "nobody", 10) == []


def test_reference_scores_are_leave_one_out_top_k_means(store, db_url):
    ids = [f"g{i:02d}" for i in range(30)]
    gaming = make_records(ids, "gaming", T0, seed=8)
    store.upsert(gaming + make_records([f"c{i:02d}" for i in range(10)], "cooking", T0, seed=9))
    k, sample_size = 5, 12

    vectors = np.stack([r["embedding"] for r in gaming]).astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)  # leave one out
    sampled = sorted(ids, key=lambda i: hashlib.md5(i.encode()).hexdigest())[:sample_size]
    brute = {i: float(np.sort(sims[ids.index(i)])[-k:].mean()) for i in sampled}

    with psycopg.connect(db_url) as conn:
        by_id = dict(conn.execute("select * from ref_thumbnails_reference_scores('gaming', %s, %s)",
                                  [k, sample_size]).fetchall())
    assert set(by_id) == set(sampled)
    for video_id, score in by_id.items():
        assert score == pytest.approx(brute[video_id], abs=1e-5)

    scores = store.reference_scores("gaming", k, sample_size)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(np.sort(scores), np.sort(list(brute.values())), atol=1e-5)


def test_a_failing_batch_leaves_earlier_batches_whole_and_a_retry_succeeds(store, db_url):
    records = make_records([f"v{i}" for i in range(6)], "gaming", T0)
    bad = [dict(r) for r in records]
    bad[4]["embedding"] = np.ones(DIM // 2, dtype=np.float32)  # batch 2 of 3+3
    with pytest.raises(StoreError, match=r"upsert into ref_thumbnails.*dimensions"):
        store.upsert(bad, batch_size=3)
    assert table_ids(db_url) == ["v0", "v1", "v2"]  # batch 1 committed whole, nothing of batch 2

    assert store.upsert(records, batch_size=3) == 6
    frame, vectors = store.rows("gaming", T0, T0 + timedelta(days=1))
    assert list(frame["video_id"]) == [r["video_id"] for r in records]
    np.testing.assert_array_equal(vectors, np.stack([r["embedding"] for r in records]))


def test_a_connection_killed_mid_upsert_is_reported_and_a_retry_succeeds(store, db_url):
    records = make_records([f"v{i}" for i in range(6)], "gaming", T0)
    assert store.count("gaming") == 0  # the store now holds a live connection
    with psycopg.connect(db_url, autocommit=True) as admin:
        # the backend kills itself while inserting the second batch's first row: a genuine drop mid-transaction
        admin.execute("create function kill_on_v3() returns trigger language plpgsql as $$ begin "
                      "if new.video_id = 'v3' then perform pg_terminate_backend(pg_backend_pid()); end if; "
                      "return new; end $$")
        admin.execute("create trigger kill_on_v3 before insert on ref_thumbnails for each row execute function kill_on_v3()")
        with pytest.raises(StoreError, match=r"upsert into ref_thumbnails on .*failed") as caught:
            store.upsert(records, batch_size=3)
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)
        assert table_ids(db_url) == ["v0", "v1", "v2"]
        admin.execute("drop trigger kill_on_v3 on ref_thumbnails")

    assert store.upsert(records, batch_size=3) == 6  # the store reconnects by itself
    assert table_ids(db_url) == [f"v{i}" for i in range(6)]


def test_a_connection_dropped_between_calls_is_replaced(store, db_url):
    store.upsert(make_records(["a", "b"], "gaming", T0))
    with psycopg.connect(db_url, autocommit=True) as admin:
        killed = admin.execute("select pg_terminate_backend(pid, 10000) from pg_stat_activity "
                               "where datname = current_database() and pid <> pg_backend_pid()").fetchall()
    assert killed == [(True,)]
    assert store.count("gaming") == 2


def test_a_store_before_the_migration_says_so(db_url):
    with SqlStore(db_url) as store, pytest.raises(StoreError, match="run the migration first"):
        store.count("gaming")


@pytest.mark.parametrize("url", [
    "postgresql://u:SECRETPW@127.0.0.1:1/db",  # nobody listens on port 1
    "postgresql://u:SECRETPW@127.0.0.1:1/db?sslmode=disable&connect_timeout=1",
])
def test_errors_never_carry_the_password(url):
    with pytest.raises(StoreError) as caught:
        SqlStore(url, connect_timeout_s=1).count("gaming")
    assert "SECRETPW" not in str(caught.value) and "127.0.0.1" in str(caught.value) and "/db" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(StoreError) as caught:
        migrate(url, DIM, connect_timeout_s=1)
    assert "SECRETPW" not in str(caught.value)


def test_a_malformed_url_is_refused_without_echoing_it():
    with pytest.raises(StoreError) as caught:
        SqlStore("postgresql://u:SECRET PW@host/db")
    assert "SECRET" not in str(caught.value) and caught.value.__cause__ is None


def test_an_older_collection_never_rolls_a_row_back(store, db_url):
    store.upsert(make_records(["a", "b"], "tech", T0 + timedelta(days=30), seed=1))
    before = dump(db_url)
    store.upsert(make_records(["a", "b"], "tech", T0, seed=2))  # a backfill of an older date
    assert dump(db_url) == before
    store.upsert(make_records(["a"], "tech", T0 + timedelta(days=31), seed=3))
    assert dump(db_url)[0] != before[0] and dump(db_url)[1] == before[1]


def test_the_table_is_closed_to_public_roles(store, db_url):
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select relrowsecurity from pg_class where relname = 'ref_thumbnails'").fetchone()[0]
        public_exec = conn.execute("select has_function_privilege('public', 'match_ref_thumbnails(vector, text, int)', "
                                   "'execute')").fetchone()[0]
    assert public_exec is False


def test_a_hung_statement_times_out_instead_of_blocking_the_store(store):
    from thumblab_dagster.lib.stores import supabase_sql

    sql = "select setting::int from pg_settings where name = 'statement_timeout'"
    assert store._call("show", lambda conn: conn.execute(sql).fetchone()[0]) == supabase_sql.STATEMENT_TIMEOUT_MS
