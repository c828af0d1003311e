"""SqlStore and migrate against a real Postgres + pgvector (pgserver, unix socket, one server per module)."""

import hashlib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from thumblab_dagster.lib.stores.supabase import COLUMNS, render_schema, to_records
from thumblab_dagster.lib.stores.supabase_sql import SqlStore, StoreError, migrate

DIM = 16
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DAY = T0.date()  # the partition T0's rows were collected for
OLD_SCHEMA = Path(__file__).with_name("ref_thumbnails_before_partition_date.sql")
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def store(db_url):
    migrate(db_url, DIM)
    with SqlStore(db_url) as s:
        yield s


def make_records(ids, niche, collected_at, seed=0, views=None, day=DAY):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "video_id": ids, "niche": niche, "title": [f"title {i}" for i in ids],
        "thumbnail_url": [f"https://i.ytimg.com/vi/{i}/hq.jpg" for i in ids],
        "views_per_hour": views if views is not None else rng.uniform(1, 1000, len(ids)),
        "view_count": rng.integers(1, 10**9, len(ids)), "published_at": T0 - timedelta(days=3),
        "channel_title": "chan", "description": None, "collected_at": collected_at,
    })
    return to_records(frame, rng.normal(size=(len(ids), DIM)).astype(np.float32), model="clip-test",
                      partition_date=day)


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
    assert "(niche, partition_date)" in indexes["ref_thumbnails_niche_partition_date_idx"]
    assert first["columns"][-1] == ("partition_date", "date", True)
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
    assert store.ids_between_dates("gaming", DAY, DAY) == set(ids)
    assert store.ids_between_dates("gaming", DAY + timedelta(days=1), DAY + timedelta(days=9)) == set()

    frame, vectors = store.rows_between_dates("gaming", DAY - timedelta(days=89), DAY)
    assert list(frame.columns) == COLUMNS and list(frame["video_id"]) == ids
    assert set(frame["partition_date"]) == {"2024-05-01"}
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

    empty, no_vectors = store.rows_between_dates("gaming", DAY - timedelta(days=9), DAY - timedelta(days=8))
    assert empty.empty and list(empty.columns) == COLUMNS and no_vectors.shape[0] == 0
    assert store.upsert([]) == 0


def test_retention_deletes_exactly_the_niches_rows_of_partitions_before_the_window(store, db_url):
    first = DAY
    late = T0 + timedelta(days=60)  # when each row was collected says nothing: a late run keeps its date
    store.upsert(make_records(["old1"], "gaming", late, day=first - timedelta(days=2))
                 + make_records(["old2"], "gaming", late, seed=1, day=first - timedelta(days=1))
                 + make_records(["edge"], "gaming", T0 - timedelta(days=3), seed=2, day=first)
                 + make_records(["new"], "gaming", T0, seed=3, day=first + timedelta(days=1))
                 + make_records(["other"], "cooking", T0, seed=4, day=first - timedelta(days=30)))
    assert store.delete_before("gaming", first) == 2
    assert table_ids(db_url) == ["edge", "new", "other"]
    assert store.delete_before("gaming", first) == 0
    with pytest.raises(TypeError, match="must be a date"):
        store.delete_before("gaming", T0)  # a time: which day it is depends on a zone


def test_a_late_run_keeps_its_partition_date(store):
    d = date(2024, 5, 1)
    # date D collected 40 days late: the wall clock is past D's window, the partition date is not
    store.upsert(make_records(["late1", "late2"], "tech", T0 + timedelta(days=40), day=d))
    store.upsert(make_records(["prev"], "tech", T0 - timedelta(days=89), seed=1, day=d - timedelta(days=89)))
    store.upsert(make_records(["gone"], "tech", T0 - timedelta(days=90), seed=2, day=d - timedelta(days=90)))
    assert store.ids_between_dates("tech", d - timedelta(days=89), d) == {"late1", "late2", "prev"}
    frame, _ = store.rows_between_dates("tech", d, d)
    assert list(frame["partition_date"]) == ["2024-05-01", "2024-05-01"]
    assert (frame["collected_at"] == pd.Timestamp(T0 + timedelta(days=40))).all()
    assert store.delete_before("tech", d - timedelta(days=89)) == 1  # only "gone"


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
    frame, vectors = store.rows_between_dates("gaming", DAY, DAY)
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
    store.upsert(make_records(["a", "b"], "tech", T0 + timedelta(days=30), seed=1, day=DAY + timedelta(days=30)))
    before = dump(db_url)
    store.upsert(make_records(["a", "b"], "tech", T0, seed=2))  # a backfill of an older date
    assert dump(db_url) == before
    # a late run of an older date: collected after the stored row, but for an older partition
    store.upsert(make_records(["a", "b"], "tech", T0 + timedelta(days=60), seed=4, day=DAY + timedelta(days=29)))
    assert dump(db_url) == before
    store.upsert(make_records(["a"], "tech", T0 + timedelta(days=31), seed=3, day=DAY + timedelta(days=31)))
    assert dump(db_url)[0] != before[0] and dump(db_url)[1] == before[1]
    # the same partition collected again later (a re-run) wins; an earlier collection of it does not
    store.upsert(make_records(["b"], "tech", T0 + timedelta(days=30, hours=1), seed=5, day=DAY + timedelta(days=30)))
    rerun = dump(db_url)[1]
    assert rerun != before[1]
    store.upsert(make_records(["b"], "tech", T0 + timedelta(days=29), seed=6, day=DAY + timedelta(days=30)))
    assert dump(db_url)[1] == rerun


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


def fresh_database(db_url: str, suffix: str) -> str:
    name = f"{conninfo_to_dict(db_url)['dbname']}_{suffix}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return make_conninfo(db_url, dbname=name)


def without_oids(snapshot: dict) -> dict:
    return {**snapshot, "functions": [f[1:] for f in snapshot["functions"]]}


def test_migrating_a_table_made_before_partition_date_fills_it_from_the_hobart_day(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(OLD_SCHEMA.read_text().replace("{dim}", str(DIM)))
        rng = np.random.default_rng(3)
        for video_id, niche, collected_at in [
            ("may_late", "tech", "2024-05-01T13:59:59Z"),   # 23:59:59 on May 1 in Hobart (AEST, +10)
            ("may_next", "tech", "2024-05-01T14:00:00Z"),   # midnight: May 2 in Hobart
            ("summer", "tech", "2024-01-10T13:30:00Z"),     # 00:30 on Jan 11 in Hobart (AEDT, +11)
            ("other", "music", "2024-05-01T03:00:00Z"),
        ]:
            conn.execute("insert into ref_thumbnails (video_id, niche, embedding, model, collected_at) "
                         "values (%s, %s, %s::vector, 'clip-test', %s)",
                         [video_id, niche, str(rng.normal(size=DIM).astype(np.float32).tolist()), collected_at])
    before_other_dim = schema_snapshot(db_url)
    with pytest.raises(ValueError, match=rf"{DIM}-dimensional.*not 32"):
        migrate(db_url, 32)  # another dimension is refused before anything changes
    assert schema_snapshot(db_url) == before_other_dim

    result = migrate(db_url, DIM)
    assert (result["created"], result["backfilled"]) == (False, 4)
    migrated = schema_snapshot(db_url)
    fresh = fresh_database(db_url, "fresh")
    migrate(fresh, DIM)
    assert without_oids(migrated) == without_oids(schema_snapshot(fresh))  # as if made today
    with psycopg.connect(db_url) as conn:
        days = dict(conn.execute("select video_id, partition_date::text from ref_thumbnails").fetchall())
    assert days == {"may_late": "2024-05-01", "may_next": "2024-05-02", "summer": "2024-01-11",
                    "other": "2024-05-01"}

    rows = dump(db_url)
    again = migrate(db_url, DIM)  # the second migration finds nothing to do
    assert (again["created"], again["backfilled"]) == (False, 0)
    assert schema_snapshot(db_url) == migrated and dump(db_url) == rows

    with SqlStore(db_url) as store:  # the store and both functions work on the migrated table
        assert store.ids_between_dates("tech", date(2024, 5, 1), date(2024, 5, 1)) == {"may_late"}
        assert store.newest_model("tech") == "clip-test"
        assert len(store.match(np.ones(DIM, np.float32), "tech", 10)) == 3
        assert store.reference_scores("tech", 2, 10).shape == (3,)
        store.upsert(make_records(["may_late"], "tech", T0 + timedelta(days=1), day=date(2024, 5, 2)))
        assert store.ids_between_dates("tech", date(2024, 5, 2), date(2024, 5, 2)) == {"may_late", "may_next"}
        assert store.delete_before("tech", date(2024, 5, 2)) == 1  # summer


def test_a_row_without_its_partition_date_is_refused(store):
    frame = pd.DataFrame({"video_id": ["a"], "niche": ["tech"], "collected_at": [T0]})
    with pytest.raises(ValueError, match="partition date"):
        to_records(frame, np.ones((1, DIM), np.float32), "clip-test")
    with pytest.raises(ValueError, match="'2024-13-01' is not a date"):
        to_records(frame, np.ones((1, DIM), np.float32), "clip-test", partition_date="2024-13-01")
    [record] = to_records(frame.assign(partition_date="2024-05-01"), np.ones((1, DIM), np.float32), "clip-test")
    assert record["partition_date"] == date(2024, 5, 1)
    with pytest.raises(StoreError, match="partition_date"):
        store.upsert([dict(record, partition_date=None)])


def test_the_readme_quotes_the_migration_as_shipped():
    readme = README.read_text()
    block = readme.split("The migration (`thumblab_dagster/sql/ref_thumbnails.sql`", 1)[1]
    block = block.split("```sql\n", 1)[1].split("```", 1)[0]
    assert block == render_schema(512), "README's SQL block differs: paste `thumblab supabase-schema --dim 512`"
