"""The music pipeline from audio folder to published library, on synthesised audio, real Essentia and
MusiCNN, a real Postgres (pgserver) and real faiss."""

from __future__ import annotations

import os

import numpy as np
import pytest
import sqlalchemy as sa

from thumblab_dagster.lib.collections.music import pipeline
from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.scan import PathOutsideError, file_id_for
from thumblab_dagster.lib.collections.music.store import MusicStore

# Two styles a listener tells apart: a click track with bright chords, and slow soft pads.
STYLES = {"clicks": dict(tempo_bpm=128.0, key="A", scale="minor"), "pads": dict(tempo_bpm=76.0, key="E", scale="major")}
ESSENTIA_ONLY = pipeline.MusicSettings(include_tensorflow=False)


def write_library(folder, per_style: int = 3, seconds: float = 4.0) -> dict[str, str]:
    """Tracks of two styles, each by its own artist; returns relative path -> style."""
    styles = {}
    for style, track in STYLES.items():
        for i in range(per_style):
            relative = f"{style}/{style}_{i}.wav"
            folder.write(relative, seconds=seconds, sample_rate=44100, style=style, seed=i, title=f"{style} {i}",
                         artist=f"{style} artist {i % 2}", **track)
            styles[relative] = style
    return styles


@pytest.fixture
def library(tmp_path, music_folder, music_store):
    layout = MusicLayout.at(tmp_path / "data", music_dir=music_folder.root)
    return layout, music_store, music_folder


def test_a_library_of_two_styles_is_built_published_and_keeps_similar_tracks_within_style(library):
    layout, store, folder = library
    styles = write_library(folder)
    result = pipeline.build_from_folder(layout, store, pipeline.MusicSettings())
    assert result["published"] and result["indexed"] == len(styles) and result["dimensions"] == 67
    assert result["analysis"]["analysed"] == len(styles) and not result["failures"]
    published = pipeline.load_library(layout)
    for relative, style in styles.items():
        nearest = published.similar(file_id_for(relative), top_n=2)
        assert [styles[hit["path"]] for hit in nearest] == [style, style], (relative, nearest)
    stats = pipeline.statistics(layout, store, "music")
    assert stats["index_coverage"] == 1.0 and stats["indexed_files"] == stats["analyzed_files"] == len(styles)
    assert stats["vector_dimension"] == 67 and stats["index_loaded"] and stats["faiss_available"]
    assert store.id_map("music") == published.ids   # the database's id map follows the published index


def test_an_unchanged_library_is_not_rebuilt_and_a_deleted_file_leaves_at_the_next_build(library):
    layout, store, folder = library
    styles = write_library(folder, per_style=2, seconds=3.0)
    pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    published = layout.library("music")
    before = {p.name: p.stat().st_mtime_ns for p in published.iterdir()}
    again = pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    assert again["skipped"] and "unchanged" in again["skipped"] and again["analysis"]["analysed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in layout.library("music").iterdir()} == before

    gone = next(iter(styles))
    (folder.root / gone).unlink()
    rebuilt = pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    assert rebuilt["scan"]["deleted"] == 1 and rebuilt["published"]
    library_ = pipeline.load_library(layout)
    assert file_id_for(gone) not in library_ and library_.size == len(styles) - 1
    assert pipeline.statistics(layout, store, "music")["index_coverage"] == 1.0


def test_a_file_that_fails_to_decode_is_recorded_and_skipped_never_failing_the_batch(library):
    layout, store, folder = library
    write_library(folder, per_style=1, seconds=3.0)
    (folder.root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    result = pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    assert result["published"] and result["indexed"] == 2
    assert [f["path"] for f in result["failures"]] == ["broken.wav"]
    assert "broken.wav" in result["failures"][0]["reason"]
    row = store.file(file_id_for("broken.wav"))
    assert row.status == "failed" and row.error
    assert pipeline.statistics(layout, store, "music")["failed_files"] == 1
    # not retried until its content changes
    assert pipeline.analyse_pending(store, layout, ESSENTIA_ONLY).pending == 0


def test_add_track_appends_without_a_rebuild_and_keeps_ids_aligned(library):
    layout, store, folder = library
    write_library(folder, per_style=2, seconds=3.0)
    pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    before = pipeline.load_library(layout)
    folder.write("new/late.wav", seconds=3.0, sample_rate=44100, style="pads", seed=9, title="late", artist="x",
                 **STYLES["pads"])
    added = pipeline.add_track(layout, store, "music", "new/late.wav", ESSENTIA_ONLY)
    assert added["published"] and added["position"] == before.size and added["total_vectors"] == before.size + 1
    after = pipeline.load_library(layout)
    new_id = file_id_for("new/late.wav")
    assert after.ids == before.ids + [new_id]
    assert store.id_map("music") == after.ids
    # the index's space did not move: the stored standardiser is the same, old vectors unchanged
    assert after.standardiser.to_json() == before.standardiser.to_json()
    np.testing.assert_allclose(after.vector_of(before.ids[0]), before.vector_of(before.ids[0]), atol=1e-6)
    _, found = after.loaded.searcher.search(after.vector_of(new_id)[None, :], 1)   # the new row finds itself
    assert after.ids[found[0, 0]] == new_id
    from thumblab_dagster.lib.engine.validate import validate_index_dir

    assert validate_index_dir(layout.index_dir("music")).passed
    with pytest.raises(ValueError, match="already in library"):
        pipeline.add_track(layout, store, "music", "new/late.wav", ESSENTIA_ONLY)


def test_add_track_refuses_a_path_outside_the_music_folder_without_reading_it(library, tmp_path):
    layout, store, folder = library
    write_library(folder, per_style=1, seconds=3.0)
    pipeline.build_from_folder(layout, store, ESSENTIA_ONLY)
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"secret")
    os.symlink(outside, folder.root / "link.wav")
    for path in ("../outside.wav", str(outside), "link.wav"):
        with pytest.raises(PathOutsideError):
            pipeline.add_track(layout, store, "music", path, ESSENTIA_ONLY)


def test_the_blocking_check_fails_when_the_index_no_longer_matches_the_analyses(library, music_db_url):
    layout, store, folder = library
    write_library(folder, per_style=2, seconds=3.0)
    pipeline.scan_folder_into(store, layout)
    pipeline.analyse_pending(store, layout, ESSENTIA_ONLY)
    pipeline.build_index(layout, store, "music", ESSENTIA_ONLY)
    assert pipeline.check_alignment(layout, store, "music", ESSENTIA_ONLY).passed
    # another analysis lands for one file (as if the index were built from stale rows)
    engine = sa.create_engine(music_db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE track_analysis SET analysis = jsonb_set(analysis, '{tempo_bpm}', '200.0')"))
    engine.dispose()
    report = pipeline.check_alignment(layout, store, "music", ESSENTIA_ONLY)
    assert not report.passed and any("do not find their own id" in p for p in report.problems)


def test_an_imported_features_table_is_a_library_without_audio_or_database(tmp_path):
    layout = MusicLayout.at(tmp_path / "data")
    rng = np.random.default_rng(0)
    rows = 60
    table = tmp_path / "features.csv"
    genre = np.repeat(["rock", "jazz", "folk"], rows // 3)
    centre = {"rock": 0.0, "jazz": 3.0, "folk": 6.0}
    lines = ["track_id,genre,bpm,energy,brightness"]
    for i, g in enumerate(genre):
        lines.append(f"t{i},{g},{rng.uniform(60, 180):.2f},{centre[g] + rng.normal(0, 0.3):.4f},"
                     f"{centre[g] / 2 + rng.normal(0, 0.3):.4f}")
    table.write_text("\n".join(lines) + "\n")
    result = pipeline.import_table(layout, table, "track_id", "imported", exclude_columns=["bpm"])
    assert result["published"] and result["rows"] == rows and result["features"] == ["energy", "brightness"]
    library_ = pipeline.load_library(layout, "imported")
    hits = library_.similar("t0", top_n=5)
    assert all(h["id"] != "t0" for h in hits)
    assert all(genre[int(h["id"][1:])] == "rock" for h in hits)
    stats = pipeline.statistics(layout, None, "imported")
    assert stats["total_vectors"] == rows and stats["index_coverage"] == 1.0


def test_a_store_never_shows_its_password(music_db_url):
    url = sa.engine.make_url(music_db_url).set(password="hunter2")
    assert "hunter2" not in repr(MusicStore(url.render_as_string(hide_password=False)))
