"""The directory layout of a published copy: ``<root>/<name>/`` names one complete version, swapped in one step."""

from __future__ import annotations

import os
import stat

from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.index_dir import INDEX_FILE, MANIFEST_FILE, checksum_problems, read_manifest
from thumblab_dagster_tests.engine.vectors import write_small_index

LAYOUT = publishing.DirectoryLayout({INDEX_FILE: "embeddings.index"})
FILES = ["embeddings.index", "ids.npy", "manifest.json", "metadata.parquet"]


def test_the_name_is_a_directory_of_the_current_version_under_the_consumers_names(tmp_path):
    root = tmp_path / "pub"
    for day, prefix in [("01", "a"), ("02", "b"), ("03", "c")]:
        index = write_small_index(tmp_path / prefix, prefix, seed=ord(prefix))
        result = publishing.publish(index, root, "area", f"2026-11-{day}", layout=LAYOUT)
        assert result.published and result.paths["directory"] == str(root / "area")
    store = root / ".versions" / "area"
    assert os.readlink(store / "current") == "v000003-2026-11-03"
    assert os.readlink(root / "area") == ".versions/area/v000003-2026-11-03"   # relative: the root may move
    assert sorted(p.name for p in store.iterdir()) == ["current", "v000002-2026-11-02", "v000003-2026-11-03"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["area"]   # no flat files
    assert sorted(p.name for p in (root / "area").iterdir()) == FILES
    manifest = read_manifest(root / "area" / MANIFEST_FILE)
    assert manifest.snapshot == "2026-11-03" and checksum_problems(root / "area", manifest) == []
    loaded = publishing.load_published(root, "area", layout=LAYOUT)
    assert loaded.directory == (store / "v000003-2026-11-03").resolve() and loaded.ids[0] == "c-0"
    assert stat.S_IMODE((root / "area" / "embeddings.index").stat().st_mode) == 0o644
    older = publishing.publish(write_small_index(tmp_path / "z", "z"), root, "area", "2026-10-01", layout=LAYOUT)
    assert not older.published and "newer" in older.reason
    assert publishing.load_published(root, "area", layout=LAYOUT).ids[0] == "c-0"


def test_a_reader_holding_the_resolved_directory_keeps_a_complete_set(tmp_path):
    root = tmp_path / "pub"
    publishing.publish(write_small_index(tmp_path / "a", "a"), root, "area", "2026-11-01", layout=LAYOUT)
    held = publishing.published_directory(root, "area")   # a running reader resolved it once
    publishing.publish(write_small_index(tmp_path / "b", "b", seed=1), root, "area", "2026-11-02", layout=LAYOUT)
    # the previous version is kept for it, whole; a new reader gets the new one
    assert checksum_problems(held, read_manifest(held / MANIFEST_FILE)) == []
    assert read_manifest(held / MANIFEST_FILE).snapshot == "2026-11-01"
    assert read_manifest(root / "area" / MANIFEST_FILE).snapshot == "2026-11-02"


def test_a_real_directory_from_an_earlier_tool_is_swapped_out_and_a_stale_link_repaired(tmp_path):
    root = tmp_path / "pub"
    (root / "area").mkdir(parents=True)
    (root / "area" / "embeddings.index").write_bytes(b"from the seed's own pipeline")
    publishing.publish(write_small_index(tmp_path / "a", "a"), root, "area", "2026-11-01", layout=LAYOUT)
    assert (root / "area").is_symlink() and sorted(p.name for p in (root / "area").iterdir()) == FILES
    assert sorted(p.name for p in root.iterdir()) == [".area.publish.lock", ".versions", "area"]   # old dir gone
    publishing.publish(write_small_index(tmp_path / "b", "b", seed=1), root, "area", "2026-11-02", layout=LAYOUT)
    # a publish killed between ``current`` and the name: the name still shows the previous version
    os.replace(_link(root, ".versions/area/v000001-2026-11-01"), root / "area")
    refused = publishing.publish(write_small_index(tmp_path / "z", "z"), root, "area", "2026-10-01", layout=LAYOUT)
    assert not refused.published
    assert os.readlink(root / "area") == ".versions/area/v000002-2026-11-02"


def _link(root, target):
    link = root / ".probe.link"
    os.symlink(target, link)
    return link



def test_a_linking_layout_shares_the_index_files_and_copies_when_the_mode_differs(tmp_path):
    index = write_small_index(tmp_path / "a", "a")
    linking = publishing.DirectoryLayout({INDEX_FILE: "embeddings.index"}, link=True)
    assert publishing.publish(index, tmp_path / "pub", "area", "2026-11-30", layout=linking).published
    # the same inode: a large store is not held twice on disk
    assert os.path.samefile(index / INDEX_FILE, tmp_path / "pub" / "area" / "embeddings.index")
    assert os.path.samefile(index / "ids.npy", tmp_path / "pub" / "area" / "ids.npy")
    # a publish mode other than the index directory's: copied, so the index directory keeps its own mode
    assert publishing.publish(index, tmp_path / "pub2", "area", "2026-11-30", mode=0o640, layout=linking).published
    assert not os.path.samefile(index / INDEX_FILE, tmp_path / "pub2" / "area" / "embeddings.index")
    assert stat.S_IMODE((index / INDEX_FILE).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pub2" / "area" / "embeddings.index").stat().st_mode) == 0o640
    # the default layout copies
    assert publishing.publish(index, tmp_path / "pub3", "area", "2026-11-30", layout=LAYOUT).published
    assert not os.path.samefile(index / INDEX_FILE, tmp_path / "pub3" / "area" / "embeddings.index")
