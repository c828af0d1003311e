"""Ids: strings in ids.npy, or implicit positions (row i is id i) with no file at all."""

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.build import POSITIONS, IndexSpec, build_index_dir
from thumblab_dagster.lib.engine.ids import PositionIds, id_array
from thumblab_dagster.lib.engine.shards import load_sharded
from thumblab_dagster.lib.engine.validate import check_alignment, validate_index_dir
from thumblab_dagster.lib.engine.versions import VersionedIndex, VersionMismatchError, add

FEATURES = {"schema": "track features v1", "identity": "features-v1"}


def clustered(n, d=24, clusters=30, seed=0):
    centres = np.random.default_rng(777).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_position_ids_answer_like_an_array_without_being_one():
    ids = PositionIds(10**12)  # a trillion ids cost nothing until asked for
    assert len(ids) == 10**12 and ids[5] == 5 and ids[-1] == 10**12 - 1
    np.testing.assert_array_equal(ids[np.array([3, 1, 7])], [3, 1, 7])
    small = PositionIds(5)
    assert small.tolist() == [0, 1, 2, 3, 4] and np.asarray(small).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(small[np.array([True, False, True, False, False])], [0, 2])
    np.testing.assert_array_equal(small[1:4], [1, 2, 3])
    with pytest.raises(IndexError):
        small[5]
    with pytest.raises(IndexError):
        small[np.array([0, 9])]


def test_string_ids_are_converted_by_numpy_into_fixed_width_unicode():
    assert id_array(np.arange(3)).tolist() == ["0", "1", "2"]
    assert id_array(pd.Series(["a", "bb"])).dtype.kind == "U"
    assert id_array([]).dtype == np.dtype("<U1")


@pytest.mark.parametrize("mode", [None, POSITIONS], ids=["ids=None", "ids='positions'"])
def test_implicit_id_index_round_trip(tmp_path, mode):
    vectors = clustered(5000)
    manifest = build_index_dir(tmp_path / "p", vectors, mode,
                               IndexSpec(factory="IVF32,Flat", target_recall=0.9, embedding=FEATURES))
    assert manifest.ids.kind == "positions" and manifest.ids.file is None and manifest.positions
    assert not (tmp_path / "p" / "ids.npy").exists() and "ids.npy" not in manifest.files
    loaded = vi.load_index_dir(tmp_path / "p")
    assert isinstance(loaded.ids, PositionIds) and len(loaded.ids) == 5000
    _, found = loaded.search(vectors[:50], 1)
    assert loaded.ids[found[:, 0]].tolist() == list(range(50))  # positions are the ids
    report = validate_index_dir(tmp_path / "p")
    assert report.passed, report.problems
    assert report.metrics["ids"] == "positions" and report.metrics["num_ids"] == 5000
    assert check_alignment(tmp_path / "p", None, vectors).passed
    assert not check_alignment(tmp_path / "p", None, vectors[:4990]).passed  # ten rows more than expected

    result = publishing.publish(tmp_path / "p", tmp_path / "pub", "mosaic", snapshot="2026-12-01")
    assert result.published and "ids" not in result.paths
    published = {p.name for p in (tmp_path / "pub").iterdir() if not p.name.startswith(".")}
    assert published == {"mosaic.index", "mosaic_manifest.json"}  # no mosaic_ids.npy
    served = publishing.load_published(tmp_path / "pub", "mosaic")
    assert isinstance(served.ids, PositionIds) and served.manifest.snapshot == "2026-12-01"
    _, found = served.search(vectors[100:110], 1)
    assert served.ids[found[:, 0]].tolist() == list(range(100, 110))


def test_a_tampered_manifest_count_is_caught_for_position_ids(tmp_path):
    vectors = clustered(300)
    build_index_dir(tmp_path / "p", vectors, None, factory="Flat")
    path = tmp_path / "p" / "manifest.json"
    path.write_text(path.read_text().replace('"ntotal": 300', '"ntotal": 310'))
    with pytest.raises(vi.IndexIntegrityError, match="300 vectors, 310 ids and a manifest that says 310"):
        vi.load_index_dir(tmp_path / "p")
    assert any("counts differ: index 300, id map 310, manifest 310" in p
               for p in validate_index_dir(tmp_path / "p").problems)


def test_sharded_and_versioned_indices_keep_position_ids(tmp_path):
    vectors = clustered(3000)
    manifest = build_index_dir(tmp_path / "s", vectors, None, factory="Flat", shard_size=1000)
    assert manifest.positions and not (tmp_path / "s" / "ids.npy").exists()
    sharded = load_sharded(tmp_path / "s")
    assert isinstance(sharded.ids, PositionIds) and validate_index_dir(tmp_path / "s").passed

    store = VersionedIndex(tmp_path / "lib")
    store.build(vectors[:2000], None, IndexSpec(factory="Flat", embedding=FEATURES))
    added = add(store, vectors[2000:], None, embedding=FEATURES)
    assert added.ntotal == 3000 and added.positions and added.parent_version
    live = store.load()
    _, found = live.search(vectors[[2500]], 1)
    assert live.ids[found[0, 0]] == 2500
    with pytest.raises(VersionMismatchError, match="keeps position ids"):
        add(store, vectors[:5], [f"x{i}" for i in range(5)], embedding=FEATURES)
