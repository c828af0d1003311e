"""The build spec: one object for how to build, side indexes through the same path, progress, weights."""

import logging

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.build import IndexSpec, ReferenceSpec, SideIndexSpec, build_index_dir
from thumblab_dagster.lib.engine.percentiles import row_weights
from thumblab_dagster.lib.engine.spec import resolve_spec
from thumblab_dagster.lib.engine.versions import VersionedIndex, VersionMismatchError, add, embedding_identity


def clustered(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, d))[rng.integers(0, 8, n)] + 0.7 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def leave_one_out(vectors, k):
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.sort(np.sort(sims, axis=1)[:, -k:].mean(axis=1))


def test_keywords_and_the_spec_say_the_same_thing():
    weights = np.ones(3)
    spec = resolve_spec(None, factory="Flat", reference=ReferenceSpec(k=5, weights=weights, weighting="plays"),
                        extra=None)
    assert spec.factory == "Flat" and spec.extra == {}
    assert (spec.reference.k, spec.reference.weights is weights, spec.reference.weighting) == (5, True, "plays")
    assert resolve_spec(IndexSpec(reference=ReferenceSpec(k=7)), reference=None).reference is None
    with pytest.raises(TypeError, match="unknown build setting.*memory_budget"):
        resolve_spec(None, memory_budget=10)
    with pytest.raises(TypeError, match="unknown build setting.*reference_k"):
        resolve_spec(None, reference_k=10)  # one way to say it: ReferenceSpec


def test_weights_come_from_whatever_column_the_collection_names():
    frame = pd.DataFrame({"plays": [0.0, np.e - 1, -5.0, None]})
    np.testing.assert_allclose(row_weights(frame, "plays"), [0.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="weighting by 'likes' needs a 'likes' metadata column"):
        row_weights(frame, "likes")


def test_a_side_index_goes_through_the_engine_and_is_published_beside_the_index(tmp_path):
    vectors, side = clustered(300), clustered(120, seed=5)
    ids = [f"r{i}" for i in range(300)]
    spec = IndexSpec(reference=ReferenceSpec(k=10), metadata=pd.DataFrame({"row": ids}), id_column="row",
                     side_indexes=(SideIndexSpec(key="captions", prefix="caption", vectors=side, reference_k=10,
                                                 describe={"embedding": "text tower"}),))
    manifest = build_index_dir(tmp_path / "i", vectors, ids, spec)
    entry = manifest["captions"]
    assert manifest.side_indexes == ["captions"]
    assert (entry.vectors, entry.reference, entry.k, entry.rows, entry["embedding"]) == \
        ("caption_vectors.npy", "caption_reference_scores.npy", 10, 120, "text tower")
    assert {"caption_vectors.npy", "caption_reference_scores.npy"} <= set(manifest.files)
    np.testing.assert_allclose(np.load(tmp_path / "i" / "caption_reference_scores.npy"), leave_one_out(side, 10),
                               atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "i" / "caption_vectors.npy"), side)
    assert not list(tmp_path.glob(".*"))  # nothing staged is left behind
    publishing.publish(tmp_path / "i", tmp_path / "pub", "main", "2026-12-01")
    published = vi.read_manifest(tmp_path / "pub" / "main_manifest.json")
    assert vi.file_path(tmp_path / "pub", published, published["captions"]["vectors"]).name == "main_caption_vectors.npy"
    assert (tmp_path / "pub" / "main_caption_reference_scores.npy").exists()

    none = build_index_dir(tmp_path / "j", vectors, ids, side_indexes=(SideIndexSpec("captions", "caption", None),))
    assert none["captions"] is None and none.side_indexes is None and "caption_vectors.npy" not in none.files


def test_a_malformed_side_index_entry_is_refused_at_load(tmp_path):
    side = SideIndexSpec(key="captions", prefix="caption", vectors=clustered(50, seed=2), reference_k=5)
    build_index_dir(tmp_path / "i", clustered(100), None, side_indexes=(side,))
    path = tmp_path / "i" / "manifest.json"
    path.write_text(path.read_text().replace('"rows": 50', '"rows": "fifty"'))
    with pytest.raises(vi.IndexIntegrityError, match="side index 'captions': rows: Input should be a valid integer"):
        vi.read_manifest(tmp_path / "i")


def test_every_stage_reports_progress(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="thumblab_dagster.lib.engine")
    seen = []
    vectors = clustered(6000, d=32)
    build_index_dir(tmp_path / "i", vectors, None,
                    IndexSpec(factory="IVF32,PQ8", target_recall=0.9, batch_size=1000, reference=ReferenceSpec(k=5),
                              progress=lambda stage, message: seen.append((stage, message))))
    engine = [r for r in caplog.records if r.name.startswith("thumblab_dagster.lib.engine")]
    assert all(r.levelno == logging.INFO for r in engine)
    text = "\n".join(r.getMessage() for r in engine)
    for expected in ("training IVF32,PQ8 on 6,000 vectors", "added 300 / 6,000 vectors (5%)", "added 6,000 / 6,000",
                     "tuned IVF32,PQ8", "lower 95% bound", "reference over 6,000 rows", "wrote IVF32,PQ8 over 6,000"):
        assert expected in text
    assert [s for s, _ in seen if s != "add"] == ["train", "tune", "tune", "reference", "write"]
    assert sum(s == "add" for s, _ in seen) == 20   # a line every 5% of the rows added


def test_versions_compare_the_embedding_identity_not_its_wording(tmp_path):
    store = VersionedIndex(tmp_path / "lib")
    vectors = clustered(400)
    built_with = {"model": "encoder", "identity": "encoder|v2", "note": "first run"}
    store.build(vectors[:300], [f"a{i}" for i in range(300)], IndexSpec(factory="Flat", embedding=built_with))
    same = {"model": "encoder", "identity": "encoder|v2", "note": "a rerun, same weights"}
    assert add(store, vectors[300:350], [f"a{i}" for i in range(300, 350)], embedding=same).ntotal == 350
    with pytest.raises(VersionMismatchError, match="from encoder\\|v3 to version .* built from encoder\\|v2"):
        add(store, vectors[350:], [f"a{i}" for i in range(350, 400)], embedding={**same, "identity": "encoder|v3"})
    assert embedding_identity({"a": 1, "b": 2}, keys=["a"]) == embedding_identity({"a": 1, "b": 3}, keys=["a"])
