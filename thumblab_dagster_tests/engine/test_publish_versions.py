"""The published layout: versions behind a ``current`` symlink, the flat copy beside them, modes, cleanup."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from thumblab_dagster.defs.resources import resources_from_env
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import publish_niche_index
from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.files import dir_mode
from thumblab_dagster.lib.query import LibrarySpec, ReferenceLibrary
from thumblab_dagster.lib.settings import SettingsError, load_settings
from thumblab_dagster_tests.engine.vectors import write_small_index

N, D = 40, 8


def build(target: Path, prefix: str, seed: int = 0) -> Path:
    return write_small_index(target, prefix, seed, N, D)


def modes(root: Path) -> dict[str, int]:
    """Every file and directory under ``root`` (root included, symlinks left out) -> its permission bits."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_versions_sit_behind_current_and_the_flat_copy_is_the_current_one(tmp_path):
    root = tmp_path / "pub"
    for day, prefix in [("01", "a"), ("02", "b"), ("03", "c")]:
        result = publishing.publish(build(tmp_path / prefix, prefix), root, "main", f"2026-11-{day}")
        assert result.published and result.paths["version"].endswith(f"v0000{ord(prefix) - 96:02d}-2026-11-{day}")
    store = root / ".versions" / "main"
    assert os.readlink(store / "current") == "v000003-2026-11-03"
    assert sorted(p.name for p in store.iterdir()) == ["current", "v000002-2026-11-02", "v000003-2026-11-03"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "main.index", "main_ids.npy", "main_manifest.json", "main_metadata.parquet"]  # the layout consumers know
    for name in ["main.index", "main_ids.npy", "main_manifest.json", "main_metadata.parquet"]:
        assert (root / name).read_bytes() == (store / "current" / name).read_bytes()
    current = publishing.load_published(root, "main")
    assert current.directory == store / "v000003-2026-11-03" and current.ids[0] == "c-0"
    assert publishing.load_published(root, "main", flat=True).ids[0] == "c-0"
    entry = ReferenceLibrary(root, LibrarySpec(names=("main",), id_key="item_id")).entry("main")
    assert entry.directory == current.directory and entry.manifest.snapshot == "2026-11-03"


def test_a_running_reader_moves_to_each_new_version_whole(tmp_path):
    root = tmp_path / "pub"
    lib = ReferenceLibrary(root, LibrarySpec(names=("main",), id_key="item_id"))
    publishing.publish(build(tmp_path / "a", "a"), root, "main", "2026-11-01")
    assert lib.entry("main").index.ids[0] == "a-0"
    publishing.publish(build(tmp_path / "b", "b", seed=1), root, "main", "2026-11-02")
    entry = lib.entry("main")
    assert entry.index.ids[0] == "b-0" and entry.manifest.snapshot == "2026-11-02"
    assert "main" in lib.names() and lib.index_info()["main"]["snapshot"] == "2026-11-02"


def test_a_root_published_before_versions_is_read_flat_until_the_next_publish(tmp_path):
    root = tmp_path / "pub"
    publishing.publish(build(tmp_path / "a", "a"), root, "main", "2026-11-01")
    shutil.rmtree(root / ".versions")  # as an earlier release left it
    assert publishing.current_version(root, "main") is None
    lib = ReferenceLibrary(root, LibrarySpec(names=("main",), id_key="item_id"))
    assert lib.entry("main").index.ids[0] == "a-0" and publishing.load_published(root, "main").ids[0] == "a-0"
    publishing.publish(build(tmp_path / "b", "b", seed=1), root, "main", "2026-11-02")
    assert lib.entry("main").index.ids[0] == "b-0" and publishing.current_version(root, "main") is not None


def test_published_files_are_0644_and_directories_0755_whatever_the_umask(tmp_path):
    with umask(0o077):
        index = build(tmp_path / "data" / "indexes" / "main" / "2026-11-01", "a")
        publishing.publish(index, tmp_path / "pub", "main", "2026-11-01")
    published = modes(tmp_path / "pub")
    assert {m for p, m in published.items() if (tmp_path / "pub" / p).is_dir()} == {0o755}
    assert {m for p, m in published.items() if (tmp_path / "pub" / p).is_file()} == {0o644}
    # root, its lock, the flat files, .versions/main, the version and its files
    assert len(published) == 1 + 1 + 4 + 2 + 1 + 4
    built = modes(index)
    assert built == {".": 0o755, "index.faiss": 0o644, "ids.npy": 0o644, "metadata.parquet": 0o644,
                     "manifest.json": 0o644}


def test_the_publish_mode_setting_sets_files_and_directories(tmp_path, monkeypatch):
    layout = DataLayout.at(tmp_path / "data")
    build(layout.index_dir("main", "2026-11-01"), "a")
    monkeypatch.setenv("THUMBLAB_PUBLISH_MODE", "0640")
    storage = resources_from_env()["storage"]  # the setting reaches the asset through the storage resource
    assert publish_niche_index(layout, "main", "2026-11-01", mode=int(storage.publish_mode, 8)).published
    published = modes(layout.published)
    assert {m for p, m in published.items() if (layout.published / p).is_dir()} == {0o750}
    assert {m for p, m in published.items() if (layout.published / p).is_file()} == {0o640}
    assert dir_mode(0o644) == 0o755 and dir_mode(0o600) == 0o700 and dir_mode(0o664) == 0o775
    with pytest.raises(SettingsError, match=r"^THUMBLAB_PUBLISH_MODE='0444': use an octal file mode such as 0644"):
        load_settings({"THUMBLAB_PUBLISH_MODE": "0444"})  # the owner must still write (the next publish)


def test_the_next_publish_removes_what_crashed_ones_left_and_only_those(tmp_path):
    root = tmp_path / "pub"
    publishing.publish(build(tmp_path / "a", "a"), root, "main", "2026-11-01")
    publishing.publish(build(tmp_path / "a", "a"), root, "main_x", "2026-11-01")
    store = root / ".versions" / "main"
    debris = [root / ".main.index.abcd1234.tmp", root / ".main_manifest.json.x_y1z2w3.tmp",  # an earlier release's
              store / ".v000002-2026-11-02.k2j3h4g5.tmp", store / ".current.0a1b2c3d.tmp", store / ".flat.0a1b2c3d.tmp"]
    for path in debris:
        path.write_bytes(b"half")
    (store / "v000002-2026-11-02").mkdir()  # complete but never made current
    others = [root / ".main_x.index.abcd1234.tmp", root / ".main_x_ids.npy.abcd1234.tmp"]  # another name's
    for path in others:
        path.write_bytes(b"theirs")
    old = publishing.publish(build(tmp_path / "z", "z"), root, "main", "2026-10-01")
    assert not old.published and "newer" in old.reason  # refused, yet cleaned
    assert not any(p.exists() for p in debris) and not (store / "v000002-2026-11-02").exists()
    assert all(p.exists() for p in others)
    assert sorted(p.name for p in store.iterdir()) == ["current", "v000001-2026-11-01"]


def test_the_next_build_of_an_index_directory_removes_what_crashed_ones_left(tmp_path):
    target = build(tmp_path / "indexes" / "2026-11-21", "a")
    debris = [tmp_path / "indexes" / ".2026-11-21.abcd_123.tmp", tmp_path / "indexes" / ".2026-11-21.old-77-abcdef"]
    others = [tmp_path / "indexes" / ".2026-11-22.abcd_123.tmp"]
    for path in debris + others:
        path.mkdir()
        (path / "index.faiss").write_bytes(b"half")
    build(target, "b", seed=1)
    assert not any(p.exists() for p in debris) and all(p.exists() for p in others)
    assert vi.load_index_dir(target).ids[0] == "b-0"
