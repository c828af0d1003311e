"""The exact cosine scan over one-byte codes: counts and rankings equal a float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest

from thumblab_dagster.lib.engine.scan import CodeScale, CosineScan, code_norms

RNG = np.random.default_rng(3)
N, D = 5_003, 24                                   # not a multiple of any chunk or block
CODES = RNG.integers(0, 256, size=(N, D), dtype=np.uint8)
CODES[17] = 0                                      # a zero vector under the uniform scale


def brute(codes, scale, query, excluded=None):
    x = codes.astype(np.float64) * scale.scale.astype(np.float64) + scale.offset.astype(np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(query)
    cos = np.divide(x @ query, norms, out=np.zeros(len(x)), where=norms > 0)
    return np.where(excluded, np.nan, cos) if excluded is not None else cos


def scan_for(scale, excluded=None, **kwargs):
    return CosineScan(CODES, scale, code_norms(CODES, scale), excluded, **kwargs)


SCALES = {"uniform": CodeScale.uniform(D, 1 / 255),
          "signed": CodeScale.uniform(D, 1.0, -128.0),
          "affine": CodeScale(RNG.uniform(0.001, 0.02, D), RNG.uniform(-1, 0.5, D))}


@pytest.mark.parametrize("name", sorted(SCALES))
@pytest.mark.parametrize("workers, chunk, block", [(1, 1024, 1 << 18), (2, 100, 700)])
def test_threshold_count_and_ranking_equal_brute_force(name, workers, chunk, block):
    scale = SCALES[name]
    excluded = np.zeros(N, bool)
    excluded[RNG.choice(N, 400, replace=False)] = True
    query = RNG.normal(size=D)
    truth = brute(CODES, scale, query, excluded)
    valid = np.sort(truth[~np.isnan(truth)])[::-1]
    threshold = float((valid[150] + valid[151]) / 2)          # between two scores: no float tie
    found = scan_for(scale, excluded, workers=workers, chunk_rows=chunk, block_rows=block).search(query, threshold, 40)
    assert found.count == int(np.sum(truth >= threshold)) == 151
    order = np.lexsort((np.arange(N), -np.nan_to_num(truth, nan=-9)))[:40]
    np.testing.assert_array_equal(found.rows, order)
    np.testing.assert_allclose(found.scores, truth[order], atol=2e-6)
    assert not excluded[found.rows].any()


def test_knn_without_threshold_counts_every_row_scanned():
    scale = SCALES["affine"]
    query = RNG.normal(size=D)
    found = scan_for(scale).search(query, None, 7)
    truth = brute(CODES, scale, query)
    assert found.count == N
    np.testing.assert_array_equal(found.rows, np.argsort(-truth, kind="stable")[:7])


def test_a_row_finds_itself_and_zero_rows_score_zero():
    scale = SCALES["uniform"]
    scan = scan_for(scale)
    found = scan.search(scale.decode(CODES[1234]), 0.999, 5)
    assert found.rows[0] == 1234 and abs(found.scores[0] - 1) < 1e-6
    assert scan.scores(RNG.normal(size=D), 17, 18)[0] == 0.0


def test_limit_zero_still_counts():
    found = scan_for(SCALES["signed"]).search(RNG.normal(size=D), 0.0, 0)
    assert found.count > 0 and len(found.rows) == 0


def test_blocks_cover_every_row_once():
    scale = SCALES["affine"]
    query = RNG.normal(size=D)
    blocks = list(scan_for(scale).blocks(query, 999))
    assert [s for s, _ in blocks] == list(range(0, N, 999))
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), brute(CODES, scale, query), atol=2e-6)


@pytest.mark.parametrize("query, threshold, match", [
    (np.zeros(D), 0.5, "zero length"),
    (np.ones(D + 1), 0.5, "has 25 values"),
    (np.full(D, np.nan), 0.5, "NaN"),
    (np.ones(D), 1.5, "between -1 and 1"),
])
def test_bad_queries_are_refused(query, threshold, match):
    with pytest.raises(ValueError, match=match):
        scan_for(SCALES["uniform"]).search(query, threshold, 5)


def test_codes_must_be_uint8():
    with pytest.raises(ValueError, match="2-d uint8"):
        CosineScan(CODES.astype(np.int16), SCALES["uniform"], np.ones(N, np.float32))
