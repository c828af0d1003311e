"""MusicStore against a real Postgres (the session pgserver, a fresh database per test)."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from thumblab_dagster.lib.collections.music import store as store_module
from thumblab_dagster.lib.collections.music.scan import ScannedFile, file_id_for
from thumblab_dagster.lib.collections.music.store import (
    EMBEDDED_DIR,
    MusicStore,
    MusicStoreError,
    database_url,
    embedded_database_url,
    sqlalchemy_url,
)

ANALYSIS = {"tempo_bpm": 120.0, "key": "A", "scale": "minor", "tags": None}
TAGGED = {**ANALYSIS, "tags": [0.1] * 50}
VERSIONS = {"essentia": "2.1b6"}


def scanned(path: str, content: str = "a", **tags) -> ScannedFile:
    return ScannedFile(file_id=file_id_for(path), path=path, content_hash=f"sha-{content}", size_bytes=10,
                       mtime=1.0, title=tags.get("title", path), artist=tags.get("artist"), album=None,
                       duration_seconds=2.0)


def ids(rows) -> list[str]:
    return [row.file_id for row in rows]


def test_schema_is_created_idempotently_and_keeps_rows(music_db_url):
    with MusicStore(music_db_url) as store:
        store.create_schema()
        store.upsert_files([scanned("a.wav")])
        store.create_schema()  # again: nothing dropped, nothing duplicated
        assert ids(store.files()) == [file_id_for("a.wav")]
        tables = set(sa.inspect(store.engine).get_table_names())
    assert {"music_files", "track_analysis", "index_id_map"} <= tables


def test_new_changed_unchanged_deleted_flow(music_store):
    a, b, c = scanned("a.wav"), scanned("b.flac"), scanned("sub/c.wav")
    first = music_store.apply_scan([a, b, c])
    assert first.new == sorted(ids([a, b, c])) and not first.changed and not first.deleted
    assert {row.status for row in music_store.files()} == {"new"}

    b2 = scanned("b.flac", content="b2", title="Renamed")
    second = music_store.apply_scan([a, b2])
    assert second.changed == [b.file_id] and second.unchanged == [a.file_id] and second.deleted == [c.file_id]
    assert ids(music_store.files()) == [a.file_id, b.file_id]
    assert ids(music_store.files("deleted")) == [c.file_id]
    row = music_store.file(b.file_id)
    assert (row.content_hash, row.title, row.status) == ("sha-b2", "Renamed", "new")

    # the deleted file comes back: new again, under the same id
    third = music_store.apply_scan([a, b2, c])
    assert third.new == [c.file_id] and music_store.file(c.file_id).status == "new"


def test_pending_analysis_is_new_or_changed_content_only(music_store):
    a, b = scanned("a.wav"), scanned("b.wav")
    music_store.upsert_files([a, b])
    assert ids(music_store.pending_analysis(include_tensorflow=False)) == [a.file_id, b.file_id]

    assert music_store.record_analysis(a.file_id, a.content_hash, ANALYSIS, False, VERSIONS)
    assert ids(music_store.pending_analysis(False)) == [b.file_id]
    # asked for the tags too: an analysis without them is not enough
    assert ids(music_store.pending_analysis(True)) == [a.file_id, b.file_id]

    music_store.upsert_files([a, b])  # rescanned, same content: nothing new to do
    assert ids(music_store.pending_analysis(False)) == [b.file_id]
    music_store.upsert_files([scanned("a.wav", content="a2")])  # changed content: analysed again
    assert ids(music_store.pending_analysis(False)) == [a.file_id, b.file_id]
    assert music_store.file(a.file_id).status == "new"


def test_analysis_with_tags_serves_both_and_is_returned_with_its_file(music_store):
    a, b = scanned("a.wav", artist="X"), scanned("b.wav")
    music_store.upsert_files([a, b])
    music_store.record_analysis(a.file_id, a.content_hash, TAGGED, True, {**VERSIONS, "musicnn": "MSD"})
    music_store.record_analysis(b.file_id, b.content_hash, ANALYSIS, False, VERSIONS)

    assert ids(music_store.pending_analysis(True)) == [b.file_id]
    with_tags = music_store.analysed(include_tensorflow=True)
    assert [(row.file_id, row.artist, analysis) for row, analysis in with_tags] == [(a.file_id, "X", TAGGED)]
    assert [row.file_id for row, _ in music_store.analysed(include_tensorflow=False)] == [a.file_id, b.file_id]

    # changed content: the old analysis no longer describes the file
    music_store.upsert_files([scanned("a.wav", content="a2")])
    assert [row.file_id for row, _ in music_store.analysed(False)] == [b.file_id]
    music_store.mark_deleted([b.file_id])
    assert music_store.analysed(False) == []


def test_a_result_for_content_that_changed_meanwhile_is_not_recorded(music_store):
    a = scanned("a.wav")
    music_store.upsert_files([a])
    music_store.upsert_files([scanned("a.wav", content="a2")])  # rewritten while it was analysed
    assert music_store.record_analysis(a.file_id, a.content_hash, ANALYSIS, False, VERSIONS) is False
    assert music_store.record_failure(a.file_id, a.content_hash, "bad") is False
    assert music_store.file(a.file_id).status == "new" and music_store.analysed(False) == []
    with pytest.raises(KeyError, match="scan the music folder"):
        music_store.record_analysis("nope", "sha", ANALYSIS, False, VERSIONS)


def test_a_failure_is_recorded_and_not_retried_until_the_content_changes(music_store):
    a, b = scanned("a.wav"), scanned("b.wav")
    music_store.upsert_files([a, b])
    reason = "a.wav: cannot decode audio (Invalid data found)\ntraceback lines that are not stored"
    assert music_store.record_failure(a.file_id, a.content_hash, reason)

    row = music_store.file(a.file_id)
    assert (row.status, row.error) == ("failed", "a.wav: cannot decode audio (Invalid data found)")
    assert ids(music_store.pending_analysis(False)) == [b.file_id]
    assert ids(music_store.pending_analysis(True)) == [b.file_id]
    music_store.upsert_files([a])  # rescanned unchanged: still failed, still not pending
    assert music_store.file(a.file_id).status == "failed" and ids(music_store.pending_analysis(False)) == [b.file_id]

    music_store.upsert_files([scanned("a.wav", content="fixed")])
    row = music_store.file(a.file_id)
    assert (row.status, row.error) == ("new", None)
    assert ids(music_store.pending_analysis(False)) == [a.file_id, b.file_id]


def test_a_file_that_comes_back_with_analysed_content_is_analysed_again_without_work(music_store):
    a = scanned("a.wav")
    music_store.upsert_files([a])
    music_store.record_analysis(a.file_id, a.content_hash, ANALYSIS, False, VERSIONS)
    music_store.mark_deleted([a.file_id])
    assert music_store.analysed(False) == [] and music_store.counts()["deleted_files"] == 1
    music_store.upsert_files([a])
    assert music_store.file(a.file_id).status == "analysed" and music_store.pending_analysis(False) == []


def test_id_map_replace_and_append_keep_positions_contiguous(music_store):
    built = datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert music_store.id_map("music") == []
    music_store.replace_id_map("music", ["f1", "f2", "f3"], built)
    assert music_store.append_id_map("music", ["f4"]) == 3
    assert music_store.append_id_map("music", []) == 4
    assert music_store.id_map("music") == ["f1", "f2", "f3", "f4"]

    music_store.replace_id_map("other", ["x"], built)  # another library is its own map
    music_store.replace_id_map("music", ["f2", "f4"], built)  # a rebuild drops removed files
    assert music_store.id_map("music") == ["f2", "f4"] and music_store.id_map("other") == ["x"]
    assert music_store.append_id_map("music", ["f5", "f6"]) == 2
    with music_store.engine.connect() as conn:
        positions = conn.execute(sa.text("select position from index_id_map where library = 'music' "
                                         "order by position")).scalars().all()
    assert positions == [0, 1, 2, 3]


def test_id_map_replace_is_all_or_nothing(music_store):
    music_store.replace_id_map("music", ["f1", "f2"])
    with pytest.raises(sa.exc.IntegrityError):
        music_store.replace_id_map("music", ["g1", None])  # the second row is refused: the first is not kept
    assert music_store.id_map("music") == ["f1", "f2"]


def test_counts(music_store):
    assert music_store.counts() == {"total_files": 0, "analysed_files": 0, "failed_files": 0, "deleted_files": 0}
    files = [scanned(f"{n}.wav") for n in "abcd"]
    music_store.upsert_files(files)
    music_store.record_analysis(files[0].file_id, files[0].content_hash, ANALYSIS, False, VERSIONS)
    music_store.record_analysis(files[1].file_id, files[1].content_hash, TAGGED, True, VERSIONS)
    music_store.record_failure(files[2].file_id, files[2].content_hash, "cannot decode")
    music_store.mark_deleted([files[3].file_id])
    assert music_store.counts() == {"total_files": 3, "analysed_files": 2, "failed_files": 1, "deleted_files": 1}
    assert music_store.mark_deleted([files[3].file_id]) == 0


def test_database_url_prefers_the_setting_and_normalises_it(tmp_path):
    url = database_url("postgres://user:pw@db.example:5433/music", tmp_path)
    assert url == "postgresql+psycopg://user:pw@db.example:5433/music"
    assert not (tmp_path / "music_pg").exists()  # no embedded server started for a set URL


def test_errors_name_the_database_never_the_password(tmp_path):
    store = MusicStore(f"postgresql://user:s3cret-pw@/music?host={tmp_path / 'no-socket-here'}")
    assert "s3cret" not in repr(store)
    with pytest.raises(MusicStoreError) as caught:
        store.create_schema()
    message = str(caught.value)
    assert "s3cret" not in message and "\n" not in message
    assert "database 'music'" in message and "THUMBLAB_MUSIC_DB_URL" in message
    for bad in ("sqlite:///music.db", "postgresql://user:s3cret@host:port/x"):
        with pytest.raises(MusicStoreError) as caught:
            sqlalchemy_url(bad)
        assert "s3cret" not in str(caught.value)


@pytest.fixture
def private_data_root():
    """A data root outside pytest's temp folder: a pytest session starting meanwhile (another terminal)
    resets that folder to 0700, which the embedded server's own user then cannot open. Stopped and removed."""
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="thumblab-music-"))
    yield root
    folder = (root / EMBEDDED_DIR).absolute()
    if store_module._embedded.pop(folder, None):
        pgserver.get_server(folder).cleanup()
    shutil.rmtree(root, ignore_errors=True)


def test_embedded_database_is_started_once_and_reused(private_data_root):
    url = embedded_database_url(private_data_root)
    assert url.startswith("postgresql+psycopg://") and (private_data_root / "music_pg" / "PG_VERSION").exists()
    assert embedded_database_url(private_data_root) == url
    assert database_url(None, private_data_root) == url
    with MusicStore(url) as store:
        store.create_schema()
        store.upsert_files([scanned("a.wav")])
    with MusicStore(embedded_database_url(private_data_root)) as store:
        assert ids(store.files()) == [file_id_for("a.wav")]


def test_embedded_database_that_cannot_start_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the data root should be")
    with pytest.raises(MusicStoreError) as caught:
        embedded_database_url(tmp_path / "taken")
    assert "\n" not in str(caught.value) and "THUMBLAB_MUSIC_DB_URL" in str(caught.value)


def test_the_same_file_twice_in_one_upsert_is_refused_whole(music_store):
    with pytest.raises(ValueError, match="same file id twice"):
        music_store.upsert_files([scanned("a.wav"), scanned("a.wav", content="b")])
    assert music_store.files() == []
