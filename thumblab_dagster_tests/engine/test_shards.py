import json

import faiss
import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine.build import IndexSpec, build_index_dir
from thumblab_dagster.lib.engine.shards import ID_MAP_FILE, load_sharded
from thumblab_dagster.lib.engine.validate import validate_index_dir


def unit(n, d=24, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def sharded(tmp_path):
    vectors, ids = unit(1000), [f"p{i}" for i in range(1000)]
    build_index_dir(tmp_path / "s", vectors, ids, IndexSpec(factory="Flat", shard_size=300, id_column="item_id",
                                                           metadata=pd.DataFrame({"item_id": ids})))
    return tmp_path / "s", ids, vectors


def refresh_checksum(directory, name):
    """Keep the manifest's checksum of ``name`` consistent: only the validator's logic can tell."""
    path = directory / name
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": vi.sha256_file(path), "bytes": path.stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def rewrite_id_map(directory, change):
    path = directory / ID_MAP_FILE
    id_map = json.loads(path.read_text())
    change(id_map)
    path.write_text(json.dumps(id_map))
    refresh_checksum(directory, ID_MAP_FILE)


def rewrite_ids(directory, change):
    ids = np.load(directory / "ids.npy", allow_pickle=False)
    np.save(directory / "ids.npy", change(ids), allow_pickle=False)
    refresh_checksum(directory, "ids.npy")


def test_sharded_search_equals_one_exact_index(sharded):
    directory, ids, vectors = sharded
    index = load_sharded(directory)
    assert [s["count"] for s in index.offsets] == [300, 300, 300, 100]
    queries = unit(50, seed=7)
    flat = faiss.IndexFlatIP(24)
    flat.add(vectors)
    want_sims, want_pos = flat.search(queries, 10)
    sims, pos = index.search(queries, 10)
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_allclose(sims, want_sims, rtol=1e-6)
    assert validate_index_dir(directory).passed


def test_sharded_ivf_trains_once_and_keeps_global_positions(tmp_path):
    vectors, ids = unit(4000, seed=3), [f"p{i}" for i in range(4000)]
    manifest = build_index_dir(tmp_path / "s", vectors, ids, factory="IVF16,Flat", shard_size=1500)
    assert [s["count"] for s in manifest["shards"]] == [1500, 1500, 1000]
    assert manifest["tuning"]["target_met"] and manifest["search_params"]["nprobe"] >= 1
    index = load_sharded(tmp_path / "s")
    sims, pos = index.search(vectors[[5, 2500, 3999]], 1)
    assert pos[:, 0].tolist() == [5, 2500, 3999]
    centroids = [faiss.downcast_index(faiss.extract_index_ivf(s).quantizer).reconstruct_n(0, 16) for s in index.shards]
    assert all(np.array_equal(centroids[0], c) for c in centroids[1:])  # trained once, cloned
    assert validate_index_dir(tmp_path / "s").passed


def test_validator_catches_swapped_ids(sharded):
    directory, _, _ = sharded
    rewrite_ids(directory, lambda ids: np.concatenate([ids[:10], ids[[11, 10]], ids[12:]]))
    report = validate_index_dir(directory)
    assert any("position 10: id map 'p11', metadata 'p10'" in p for p in report.problems)


def test_validator_catches_a_shifted_offset(sharded):
    directory, _, _ = sharded

    def shift(m):
        m["shards"][2]["offset"] += 1
    rewrite_id_map(directory, shift)
    report = validate_index_dir(directory)
    assert not report.passed
    assert any("shard_00002.index: offset 601, expected 600" in p for p in report.problems)


def test_validator_catches_shard_labels_off_by_an_offset(tmp_path):
    # The merge_from-without-add_id pitfall: a shard's vectors carry positions from 0 again.
    vectors, ids = unit(100), [f"p{i}" for i in range(100)]
    build_index_dir(tmp_path / "s", vectors, ids, factory="Flat", shard_size=60)
    bad = faiss.IndexIDMap2(faiss.IndexFlatIP(24))
    bad.add_with_ids(vectors[60:], np.arange(0, 40, dtype=np.int64))
    faiss.write_index(bad, str(tmp_path / "s" / "shard_00001.index"))
    report = validate_index_dir(tmp_path / "s")
    assert any("shard_00001.index: local row 0 carries global position 0, expected 60" in p for p in report.problems)


def test_validator_catches_missing_shard_and_truncated_id_map(sharded):
    directory, _, _ = sharded
    rewrite_ids(directory, lambda ids: ids[:-5])
    report = validate_index_dir(directory)
    assert any("shards cover 1000 positions, id map has 995 ids" in p for p in report.problems)
    (directory / "shard_00001.index").unlink()
    report = validate_index_dir(directory)
    assert not report.passed
    assert any("shard_00001.index is missing" in p for p in report.problems)


def test_sharded_directories_written_before_ids_npy_still_load(sharded):
    """Older sharded directories kept their ids inside id_map.json and had no ``ids`` entry."""
    directory, ids, vectors = sharded
    rewrite_id_map(directory, lambda m: m.__setitem__("ids", ids))
    (directory / "ids.npy").unlink()
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"].pop("ids.npy")
    manifest.pop("ids")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    index = load_sharded(directory)
    assert index.ids.tolist() == ids and index.manifest.ids.file == ID_MAP_FILE
    _, pos = index.search(vectors[[42]], 1)
    assert index.ids[pos[0, 0]] == "p42"
    assert validate_index_dir(directory).passed
