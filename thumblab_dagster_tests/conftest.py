import os

import pytest

from thumblab_dagster_tests.fakes.youtube import FakeYouTubeServer

# No test may reach beyond loopback, and none should wait on a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The partitions are defined when the code location is imported; the tests replay dates from 2026-08
# (a 90-day window and retention beyond it), earlier than the recent default start.
os.environ.setdefault("THUMBLAB_PARTITIONS_START", "2026-01-01")

TEST_KEY = "AIzaTEST-secret-key-0123456789"


@pytest.fixture
def youtube():
    with FakeYouTubeServer() as state:
        yield state


@pytest.fixture
def resources(tmp_path, youtube):
    """Resources pointed at a temp data root and the loopback YouTube, random CLIP weights."""
    from thumblab_dagster.defs.resources import (
        ClipEmbedderResource,
        IndexEngineResource,
        StorageResource,
        ThumbnailFetchResource,
        TrendingSourceResource,
    )

    return {
        "storage": StorageResource(data_root=str(tmp_path / "data")),
        "trending_source": TrendingSourceResource(api_key=TEST_KEY, base_url=youtube.base_url, max_results=12,
                                                  retries=2, backoff_factor=0.0),
        "embedder": ClipEmbedderResource(pretrained="none", device="cpu", batch_size=8),
        # Transport retries without backoff, and no RetryPolicy wait (in-process runs sleep through it).
        "thumbnail_fetch": ThumbnailFetchResource(max_workers=4, timeout_s=5.0, max_bytes=1024 * 1024,
                                                  backoff_factor=0.0, retry_later=False),
        "index_engine": IndexEngineResource(),
    }


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real Postgres with pgvector (the pgserver package), on a unix socket, for the session."""
    import pgserver

    srv = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()


_databases = iter(range(10**6))


@pytest.fixture
def db_url(pg_server):
    """A fresh, empty database per test: no test sees another's rows or schema."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"t{next(_databases)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return make_conninfo(pg_server, dbname=name)
