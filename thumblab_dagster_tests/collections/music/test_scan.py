"""Scanning a music folder of synthetic tracks, diffs against the store, and paths kept inside the folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from thumblab_dagster.lib.collections.music.scan import (
    PathOutsideError,
    TrackNotFoundError,
    diff,
    file_id_for,
    folder_signature,
    resolve_inside,
    scan_folder,
)


def by_path(scanned) -> dict:
    return {file.path: file for file in scanned}


def test_scan_reads_tags_hashes_and_ids(music_folder):
    music_folder.write("Artist/one.flac", title="One", artist="The Metronomes", album="Grid Work")
    music_folder.write("two.wav", title="Two", artist="Soft Focus")
    music_folder.write("nested/deeper/Untagged Song.wav", style="pads")
    music_folder.write("loud.WAV")  # suffixes in any case
    music_folder.write("voice.ogg", title="Voice")
    (music_folder.root / "notes.txt").write_text("not audio")
    (music_folder.root / "cover.jpg").write_bytes(b"\xff\xd8")
    music_folder.write(".hidden.wav")  # e.g. a macOS resource fork: skipped

    files = by_path(scan_folder(music_folder.root))
    assert sorted(files) == ["Artist/one.flac", "loud.WAV", "nested/deeper/Untagged Song.wav", "two.wav",
                             "voice.ogg"]
    one = files["Artist/one.flac"]
    assert (one.title, one.artist, one.album) == ("One", "The Metronomes", "Grid Work")
    assert (files["two.wav"].title, files["two.wav"].artist) == ("Two", "Soft Focus")
    assert files["voice.ogg"].title == "Voice"
    untagged = files["nested/deeper/Untagged Song.wav"]
    assert (untagged.title, untagged.artist, untagged.album) == ("Untagged Song", None, None)
    for path, file in files.items():
        content = (music_folder.root / path).read_bytes()
        assert file.content_hash == hashlib.sha256(content).hexdigest()
        assert file.size_bytes == len(content)
        assert file.file_id == file_id_for(path) and len(file.file_id) == 16
        assert file.duration_seconds == pytest.approx(1.0, abs=0.05)
    assert file_id_for("two.wav") == file_id_for("two.wav") != file_id_for("Two.wav")


def test_a_change_is_a_change_of_content_not_of_mtime(music_folder):
    a = music_folder.write("a.wav", seed=1)
    b = music_folder.write("b.wav", seed=2)
    c = music_folder.write("c.wav", seed=3)
    first = scan_folder(music_folder.root)
    signature = folder_signature(music_folder.root)

    os.utime(b, (1_000_000_000, 1_000_000_000))  # touched only: same content
    stat = a.stat()
    music_folder.write("a.wav", seed=4)  # new content, same size, and the old mtime put back
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert a.stat().st_size == stat.st_size
    c.unlink()
    music_folder.write("d.wav", seed=5)

    second = scan_folder(music_folder.root)
    changes = diff(second, [_Known(f.file_id, f.content_hash) for f in first])
    assert changes.changed == [file_id_for("a.wav")]
    assert changes.unchanged == [file_id_for("b.wav")]
    assert changes.deleted == [file_id_for("c.wav")]
    assert changes.new == [file_id_for("d.wav")]
    assert changes.has_changes and changes.summary() == {"new": 1, "changed": 1, "unchanged": 1, "deleted": 1}
    assert folder_signature(music_folder.root) != signature

    again = diff(second, [_Known(f.file_id, f.content_hash) for f in second])
    assert not again.has_changes and len(again.unchanged) == 3


class _Known:
    def __init__(self, file_id: str, content_hash: str, status: str = "new"):
        self.file_id, self.content_hash, self.status = file_id, content_hash, status


def test_a_deleted_row_is_not_deleted_again_and_comes_back_as_new(music_folder):
    music_folder.write("a.wav")
    scanned = scan_folder(music_folder.root)
    gone = _Known(file_id_for("gone.wav"), "x", status="deleted")
    back = _Known(file_id_for("a.wav"), scanned[0].content_hash, status="deleted")
    changes = diff(scanned, [gone, back])
    assert changes.new == [file_id_for("a.wav")] and changes.deleted == []


def test_scan_with_the_store_marks_changed_and_deleted_files(music_folder, music_store):
    music_folder.write("a.wav", seed=1)
    music_folder.write("b.wav", seed=2)
    assert len(music_store.apply_scan(scan_folder(music_folder.root)).new) == 2
    music_store.record_analysis(file_id_for("a.wav"), by_path(music_store.files())["a.wav"].content_hash,
                                {"tempo_bpm": 120.0}, False, {"essentia": "test"})
    music_store.record_analysis(file_id_for("b.wav"), by_path(music_store.files())["b.wav"].content_hash,
                                {"tempo_bpm": 90.0}, False, {"essentia": "test"})
    assert music_store.pending_analysis(False) == []

    music_folder.write("a.wav", seed=9)
    (music_folder.root / "b.wav").unlink()
    changes = music_store.apply_scan(scan_folder(music_folder.root))
    assert changes.changed == [file_id_for("a.wav")] and changes.deleted == [file_id_for("b.wav")]
    assert [row.path for row in music_store.pending_analysis(False)] == ["a.wav"]
    assert music_store.counts()["deleted_files"] == 1


def test_symlinks_inside_are_scanned_and_escapes_skipped(music_folder, tmp_path):
    music_folder.write("real.wav")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"RIFF not for the music folder")
    os.symlink(music_folder.root / "real.wav", music_folder.root / "alias.wav")
    os.symlink(outside / "secret.wav", music_folder.root / "escape.wav")
    os.symlink(outside, music_folder.root / "linked_folder")  # folders are not followed
    os.symlink(music_folder.root / "missing.wav", music_folder.root / "dangling.wav")

    assert [file.path for file in scan_folder(music_folder.root)] == ["alias.wav", "real.wav"]


def test_a_missing_music_folder_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="THUMBLAB_MUSIC_DIR") as caught:
        scan_folder(tmp_path / "nope")
    assert "\n" not in str(caught.value)


# --- resolve_inside ---

@pytest.fixture
def folder(music_folder, tmp_path):
    music_folder.write("albums/one/track.wav")
    music_folder.write("top.wav")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"not yours")
    root = music_folder.root
    os.symlink(outside / "secret.wav", root / "escape.wav")
    os.symlink(outside, root / "escape_dir")
    os.symlink("../outside/secret.wav", root / "relative_escape.wav")
    os.symlink(tmp_path / "outside" / "does-not-exist.wav", root / "escape_missing.wav")
    os.symlink("albums/one/track.wav", root / "alias.wav")
    os.symlink(root / "albums", root / "albums_link")
    os.symlink("../top.wav", root / "albums" / "up.wav")  # '..' in a target that stays inside
    return root


def test_resolve_inside_accepts_paths_inside(folder):
    track = (folder / "albums/one/track.wav").resolve()
    assert resolve_inside(folder, "albums/one/track.wav") == track
    assert resolve_inside(folder, Path("albums") / "one" / "track.wav") == track
    assert resolve_inside(folder, "./albums/one/track.wav") == track
    assert resolve_inside(folder, str(folder / "albums/one/track.wav")) == track  # absolute, inside
    assert resolve_inside(folder, "alias.wav") == track
    assert resolve_inside(folder, "albums_link/one/track.wav") == track
    assert resolve_inside(folder, "albums/up.wav") == (folder / "top.wav").resolve()


@pytest.mark.parametrize("user_path", [
    "../x", "../outside/secret.wav", "albums/../../outside/secret.wav", "albums/../top.wav", "/etc/passwd",
    "/", "escape.wav", "escape_dir/secret.wav", "relative_escape.wav",
    # the target does not exist: refused as outside before anything there is looked at
    "escape_missing.wav", "/nonexistent/thing.wav", "", "a\0b.wav",
])
def test_resolve_inside_refuses_paths_outside(folder, user_path):
    with pytest.raises(PathOutsideError) as caught:
        resolve_inside(folder, user_path)
    assert "\n" not in str(caught.value) and "music folder" in str(caught.value)


def test_resolve_inside_refuses_an_absolute_path_outside_spelled_by_a_sibling(folder, tmp_path):
    sibling = tmp_path / "music-other"  # shares the folder's name as a prefix
    sibling.mkdir()
    (sibling / "x.wav").write_bytes(b"x")
    with pytest.raises(PathOutsideError):
        resolve_inside(folder, str(sibling / "x.wav"))


@pytest.mark.parametrize("user_path", ["missing.wav", "albums/none/x.wav", "top.wav/x.wav", "albums", "."])
def test_resolve_inside_names_a_missing_file_in_one_line(folder, user_path):
    with pytest.raises(TrackNotFoundError) as caught:
        resolve_inside(folder, user_path)
    assert isinstance(caught.value, FileNotFoundError) and "\n" not in str(caught.value)
