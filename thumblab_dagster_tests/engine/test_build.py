import json
import threading

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.build import IndexSpec, ReferenceSpec, build_index_dir, train_points
from thumblab_dagster.lib.engine.sources import NpyFileSource, ParquetSource, open_source
from thumblab_dagster.lib.engine.tune import verify_recall
from thumblab_dagster.lib.engine.validate import validate_index_dir
from thumblab_dagster.lib.engine.versions import VersionedIndex, VersionMismatchError, add

MODEL = {"model": "ViT-B-32", "pretrained": "none", "source": "random-init"}


def clustered(n, d=32, clusters=50, spread=1.2, seed=0):
    """Overlapping clusters (same centres for every seed): hard enough that nprobe=1 or
    efSearch=16 do not already reach the target."""
    centres = np.random.default_rng(12345).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def exact_top(queries, vectors, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def collection():
    vectors = clustered(20_000)
    fresh = clustered(400, seed=99)  # never in the collection, never used for tuning
    return vectors, [f"v{i}" for i in range(len(vectors))], fresh


def centroids(index):
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    return quantizer.reconstruct_n(0, quantizer.ntotal)


def write_parquet(path, vectors):
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    pq.write_table(pa.table({"embedding": column}), path, row_group_size=1000)


def test_parquet_and_memmap_sources_stream_the_same_rows(tmp_path, collection):
    vectors, ids, _ = collection
    write_parquet(tmp_path / "e.parquet", vectors[:5000])
    np.save(tmp_path / "e.npy", vectors[:5000])
    from_parquet, from_npy = ParquetSource(tmp_path / "e.parquet"), open_source(tmp_path / "e.npy")
    assert (from_parquet.n, from_parquet.d) == (5000, 32)
    assert isinstance(from_npy, NpyFileSource)  # read in batches, never loaded whole
    rows = np.array([0, 999, 1000, 4321, 4999])
    np.testing.assert_array_equal(from_parquet.take(rows), vectors[rows])
    np.testing.assert_array_equal(from_npy.take(rows), vectors[rows])
    m1 = build_index_dir(tmp_path / "a", tmp_path / "e.parquet", ids[:5000], factory="IVF64,Flat", batch_size=700)
    m2 = build_index_dir(tmp_path / "b", tmp_path / "e.npy", ids[:5000], factory="IVF64,Flat", batch_size=700)
    assert 39 * 64 <= m1["train_points"] == m2["train_points"] <= 256 * 64
    a, b = vi.load_index_dir(tmp_path / "a"), vi.load_index_dir(tmp_path / "b")
    np.testing.assert_array_equal(a.search(vectors[:20], 5)[1], b.search(vectors[:20], 5)[1])


def test_too_few_vectors_for_the_lists_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 39,936 vectors"):
        train_points("IVF1024,Flat", 10_000)


def test_bad_build_input_is_a_clear_error_and_writes_nothing(tmp_path, collection):
    vectors, ids, _ = collection
    with pytest.raises(ValueError, match="1,000 vectors but 999 ids"):
        build_index_dir(tmp_path / "x", vectors[:1000], ids[:999])
    with pytest.raises(ValueError, match="'IVF12,Fast' is not a faiss factory string"):
        build_index_dir(tmp_path / "x", vectors[:1000], ids[:1000], factory="IVF12,Fast")
    with pytest.raises(ValueError, match="metric must be one of"):
        build_index_dir(tmp_path / "x", vectors[:1000], ids[:1000], metric="cosine")
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("factory", ["IVF128,Flat", "HNSW32", "IVF64,PQ8"])
def test_tuned_recall_holds_on_fresh_queries_and_is_applied_on_load(tmp_path, collection, factory):
    vectors, ids, fresh = collection
    manifest = build_index_dir(tmp_path / "i", vectors, ids, factory=factory, target_recall=0.9)
    tuning = manifest["tuning"]
    assert tuning["target_met"] and tuning["recall_at_k_held_out"] >= 0.9
    assert manifest["search_params"] and json.loads((tmp_path / "i" / "manifest.json").read_text())["search_params"]
    loaded = vi.load_index_dir(tmp_path / "i")
    assert loaded.searcher.params == manifest["search_params"]
    sims, found = loaded.search(fresh, 10)
    assert recall(found, exact_top(fresh, vectors, 10)) >= 0.9
    # whatever the index stores, the similarities it returns are exact
    np.testing.assert_allclose(sims[:, 0], np.einsum("qd,qd->q", fresh, vectors[found[:, 0]]), atol=1e-5)
    untuned = loaded.searcher.with_params(**{k: 1 for k in manifest["search_params"]})
    assert recall(untuned.search(fresh, 10)[1], exact_top(fresh, vectors, 10)) < 0.9  # the tuning mattered
    assert validate_index_dir(tmp_path / "i").passed
    check = verify_recall(loaded, vectors)  # what the index_recall check runs
    assert check["passed"] and not check["exact"] and check["recall"] >= 0.9
    loaded.searcher = untuned
    assert not verify_recall(loaded, vectors)["passed"]


def test_flat_needs_no_tuning(tmp_path, collection):
    vectors, ids, _ = collection
    manifest = build_index_dir(tmp_path / "f", vectors[:500], ids[:500])  # chosen for the size
    assert manifest["factory"] == "Flat" and manifest["search_params"] == {} and manifest.tuning is None
    assert manifest.get("tuning", {}) == {} and "tuning" not in manifest.to_json()


def test_range_search_scores_are_exact_and_keep_what_approximation_would_drop(tmp_path, collection):
    vectors, ids, fresh = collection
    build_index_dir(tmp_path / "pq", vectors, ids, factory="IVF64,PQ8", target_recall=0.9)
    loaded = vi.load_index_dir(tmp_path / "pq")
    threshold = 0.55
    exact = fresh[:50] @ vectors.T
    hits = loaded.range_search(fresh[:50], threshold)
    plain_lims, _, plain_i = loaded.index.range_search(fresh[:50], threshold)  # compressed scores, no re-rank
    margin = loaded.manifest["range_margin"]
    assert margin > 0
    cand_lims, _, cand_i = loaded.index.range_search(fresh[:50], threshold - margin)
    kept_by_rerank = 0
    for q, hit in enumerate(hits):
        truth = set(np.flatnonzero(exact[q] >= threshold))
        np.testing.assert_allclose(hit.scores, exact[q, hit.positions], atol=1e-5)  # exact similarities
        candidates = set(cand_i[cand_lims[q]:cand_lims[q + 1]])
        assert set(hit.positions) == candidates & truth  # none below, none above dropped
        kept_by_rerank += len(set(hit.positions) - set(plain_i[plain_lims[q]:plain_lims[q + 1]]))
    assert kept_by_rerank > 0  # true hits whose compressed score fell under the threshold


def test_versions_add_keeps_ids_aligned_without_retraining(tmp_path, collection):
    vectors, ids, _ = collection
    store = VersionedIndex(tmp_path / "lib")
    meta = pd.DataFrame({"item_id": ids})
    store.build(vectors[:15_000], ids[:15_000], IndexSpec(factory="IVF64,PQ8", embedding=MODEL, metadata=meta[:15_000],
                                                          id_column="item_id", target_recall=0.9))
    first = store.current()
    manifest = add(store, vectors[15_000:], ids[15_000:], embedding=MODEL, metadata=meta[15_000:].reset_index(drop=True))
    assert store.current() != first and manifest["parent_version"] == first and manifest["ntotal"] == 20_000
    report = validate_index_dir(store.path(store.current()))
    assert report.passed and report.metrics["positions_checked"] == 20_000  # metadata ids still line up
    assert validate_index_dir(store.path(first)).passed  # the old version is untouched
    live = store.load()
    _, found = live.search(vectors[[15_000, 19_999]], 1)
    assert [live.ids[p] for p in found[:, 0]] == ["v15000", "v19999"]
    before, after = (centroids(vi.load_index_dir(store.path(first)).index), centroids(live.index))
    np.testing.assert_array_equal(before, after)  # appended, not retrained


def test_add_refuses_another_model_dimension_or_known_ids(tmp_path, collection):
    vectors, ids, _ = collection
    store = VersionedIndex(tmp_path / "lib")
    store.build(vectors[:1000], ids[:1000], embedding=MODEL)
    current = store.current()
    with pytest.raises(VersionMismatchError, match="dimension 16 .* 32-d"):
        add(store, vectors[1000:1010, :16], ids[1000:1010], embedding=MODEL)
    with pytest.raises(VersionMismatchError, match="ViT-L-14"):
        add(store, vectors[1000:1010], ids[1000:1010], embedding={**MODEL, "model": "ViT-L-14"})
    with pytest.raises(VersionMismatchError, match="already holds"):
        add(store, vectors[1000:1010], ids[990:1000], embedding=MODEL)
    assert store.current() == current and store.versions() == [current]


def test_sharded_add_appends_a_shard(tmp_path, collection):
    vectors, ids, _ = collection
    store = VersionedIndex(tmp_path / "lib")
    store.build(vectors[:3000], ids[:3000], factory="Flat", shard_size=1000, embedding=MODEL)
    manifest = add(store, vectors[3000:3500], ids[3000:3500], embedding=MODEL)
    assert [s["count"] for s in manifest["shards"]] == [1000, 1000, 1000, 500]
    assert validate_index_dir(store.path(store.current())).passed


def test_version_swap_under_concurrent_readers_never_serves_a_mix(tmp_path):
    store = VersionedIndex(tmp_path / "lib")
    builds = 6

    def version_data(v):  # each version: its own size, ids and vectors, so any mix is visible
        n = 200 + 37 * v
        return clustered(n, d=16, seed=v), [f"b{v}-{i}" for i in range(n)]

    store.build(*version_data(0), factory="Flat", extra={"build": 0})
    errors, seen, done = [], set(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                live = store.load()
                build = live.manifest["build"]
                vectors, ids = version_data(build)
                assert list(live.ids) == ids, "ids from another version"
                _, found = live.search(vectors[-1:], 1)
                assert live.ids[found[0, 0]] == ids[-1], "index from another version"
                seen.add(build)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for v in range(1, builds):
            store.build(*version_data(v), factory="Flat", extra={"build": v})
            store.prune(keep=2)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen and seen <= set(range(builds))
    print("versions seen by readers:", sorted(seen))
    assert store.load().manifest["build"] == builds - 1
    assert len(store.versions()) == 2


def test_published_compressed_index_keeps_exact_scores(tmp_path, collection):
    vectors, ids, fresh = collection
    build_index_dir(tmp_path / "pq", vectors[:5000], ids[:5000], factory="IVF16,PQ8", target_recall=0.9)
    result = publishing.publish(tmp_path / "pq", tmp_path / "faiss_indices", "tech", snapshot="2026-11-21")
    assert result.published and (tmp_path / "faiss_indices" / "tech_vectors.npy").exists()
    served = publishing.load_published(tmp_path / "faiss_indices", "tech")
    sims, found = served.search(fresh[:20], 5)
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", fresh[:20], vectors[found]), atol=1e-5)


def test_validator_catches_stored_vectors_out_of_step_with_codes(tmp_path, collection):
    vectors, ids, _ = collection
    build_index_dir(tmp_path / "pq", vectors[:5000], ids[:5000], factory="IVF16,PQ8", target_recall=0.9)
    assert validate_index_dir(tmp_path / "pq").passed
    path = tmp_path / "pq" / "vectors.npy"
    np.save(path, np.roll(np.load(path), 1, axis=0))  # the re-rank rows shifted by one position
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    manifest["files"]["vectors.npy"] = {"sha256": vi.sha256_file(path), "bytes": path.stat().st_size}
    (tmp_path / "pq" / "manifest.json").write_text(json.dumps(manifest))  # only the logic can tell now
    report = validate_index_dir(tmp_path / "pq")
    assert not report.passed
    assert any("compressed codes are out of step with the stored vectors" in p for p in report.problems)


def test_reference_scores_are_leave_one_out_topk_means_and_get_published(tmp_path, collection):
    vectors, ids, _ = collection
    x = vectors[:2000]
    manifest = build_index_dir(tmp_path / "f", x, ids[:2000], reference=ReferenceSpec(k=10))
    assert manifest["reference_scores"].model_dump(mode="json") == {"file": "reference_scores.npy", "k": 10,
                                                                    "sampled_rows": 2000}
    stored = np.load(tmp_path / "f" / "reference_scores.npy", allow_pickle=False)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    want = np.sort(np.sort(sims, axis=1)[:, -10:].mean(axis=1))
    np.testing.assert_allclose(stored, want, atol=1e-5)
    assert validate_index_dir(tmp_path / "f").passed  # covered by the manifest's checksums
    publishing.publish(tmp_path / "f", tmp_path / "pub", "tech", snapshot="2026-11-21")
    published = vi.read_manifest(tmp_path / "pub" / "tech_manifest.json")
    assert vi.file_path(tmp_path / "pub", published, published["reference_scores"]["file"]).name == \
        "tech_reference_scores.npy"
    np.testing.assert_array_equal(np.load(tmp_path / "pub" / "tech_reference_scores.npy"), stored)
