"""Tuned recall is a promise: the lower 95% bound on held-out queries (95% over every look at
them) reaches the target, and fresh queries the tuning never saw get at least that (within
sampling noise)."""

import numpy as np
import pytest

from thumblab_dagster.lib.engine import index_dir as vi
from thumblab_dagster.lib.engine.build import IndexSpec, build_index_dir
from thumblab_dagster.lib.engine.tune import LOOK_LEVEL, recall_lower_bound, wilson_lower, z_one_sided

TARGET = 0.95
FRESH_TOLERANCE = 0.01  # 2,000 fresh queries x 10 neighbours: the measured recall's own noise


def clustered(n, d=32, clusters=50, spread=1.2, seed=0):
    centres = np.random.default_rng(12345).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """10k clustered vectors under a 200 kB budget: the engine has to compress (IVF-PQ + re-rank)."""
    vectors = clustered(10_000)
    target = tmp_path_factory.mktemp("pq") / "i"
    manifest = build_index_dir(target, vectors, None, IndexSpec(memory_budget_bytes=200_000, target_recall=TARGET))
    return vectors, target, manifest


def test_the_lower_bound_reaches_the_target_and_fresh_queries_get_it(compressed):
    vectors, target, manifest = compressed
    assert "PQ" in manifest.factory
    tuning = manifest.tuning
    assert tuning.target_met and tuning.recall_lower_bound_95 >= TARGET
    assert tuning.recall_at_k_held_out >= tuning.recall_lower_bound_95  # the bound sits below the estimate
    assert tuning.queries_from == "collection rows, own row excluded" and tuning.held_out_queries >= 400
    # up to 8 settings are checked on one held-out half: each look spends 0.05 / 8 (Bonferroni)
    assert (tuning.correction, tuning.looks_allowed, tuning.look_level) == ("bonferroni", 8, pytest.approx(0.05 / 8))
    assert 1 <= tuning.held_out_checks <= tuning.looks_allowed
    fresh = clustered(2000, seed=4242)  # never in the collection, never used for tuning
    truth = np.argsort(-(fresh @ vectors.T), axis=1, kind="stable")[:, :10]
    _, found = vi.load_index_dir(target).search(fresh, 10)
    assert recall(found, truth) >= TARGET - FRESH_TOLERANCE


def test_tuning_queries_from_outside_the_collection_are_used(tmp_path):
    vectors = clustered(8000, seed=1)
    outside = clustered(300, seed=77)
    manifest = build_index_dir(tmp_path / "i", vectors, None,
                               IndexSpec(factory="IVF64,Flat", target_recall=0.9, tune_queries=outside))
    tuning = manifest.tuning
    assert tuning.queries_from == "given" and (tuning.tuning_queries, tuning.held_out_queries) == (150, 150)
    assert tuning.target_met and tuning.recall_lower_bound_95 >= 0.9
    with pytest.raises(ValueError, match="tune_queries have 8 dimensions, the vectors 32"):
        build_index_dir(tmp_path / "j", vectors, None, factory="IVF64,Flat", tune_queries=outside[:, :8])


def test_an_unreachable_target_keeps_the_best_setting_and_says_so(tmp_path):
    vectors = clustered(5000, seed=2)
    manifest = build_index_dir(tmp_path / "i", vectors, None, factory="IVF64,Flat", target_recall=1.0)
    tuning = manifest.tuning
    assert not tuning.target_met and tuning.recall_lower_bound_95 < 1.0  # no sample proves perfection
    best = max(t["lower_bound"] for t in tuning.trials)
    assert tuning.recall_lower_bound_95 >= best - 0.02 and manifest.search_params["nprobe"] >= 16


def test_the_bound_never_promises_more_than_the_queries_show():
    perfect = np.full(20, 10), np.full(20, 10)
    assert recall_lower_bound(*perfect) == pytest.approx(wilson_lower(200, 200)) and recall_lower_bound(*perfect) < 0.99
    rng = np.random.default_rng(0)
    # correlated misses: some queries lose most of their neighbours, most lose none
    hits = np.where(rng.random(500) < 0.05, 2, 10)
    possible = np.full(500, 10)
    bound = recall_lower_bound(hits, possible)
    assert bound < hits.sum() / possible.sum()
    assert bound < wilson_lower(int(hits.sum()), int(possible.sum()))  # the bootstrap sees the correlation
    # a bound that must hold over 8 looks at once sits lower than one look's, in both of its parts
    assert recall_lower_bound(hits, possible, level=LOOK_LEVEL) < bound
    assert recall_lower_bound(*perfect, level=LOOK_LEVEL) == pytest.approx(wilson_lower(200, 200, z_one_sided(LOOK_LEVEL)))
    assert z_one_sided(0.05) == pytest.approx(1.6449, abs=1e-4) and z_one_sided(LOOK_LEVEL) == pytest.approx(2.4977, abs=1e-3)
