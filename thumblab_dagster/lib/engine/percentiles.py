"""Similarity-percentile references: each row's leave-one-out top-k mean similarity, sorted."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.search import Searcher
from thumblab_dagster.lib.engine.sources import VectorSource, sample_rows

log = logging.getLogger(__name__)

REFERENCE_SAMPLE = 20_000            # rows whose leave-one-out top-k mean forms the percentile reference


def row_weights(metadata, column: str) -> np.ndarray:
    """Per-row weights for a weighted percentile: log1p of a metadata column (missing or negative -> 0).

    Build and query side both call this, so the reference and an upload are weighted alike.
    Which columns a collection weights by is the collection's to say; any column works here.
    """
    if metadata is None or column not in metadata:
        raise ValueError(f"weighting by {column!r} needs a {column!r} metadata column")
    values = np.asarray(pd.to_numeric(metadata[column], errors="coerce"), dtype=np.float64)
    return np.log1p(np.clip(np.nan_to_num(values, nan=0.0), 0.0, None))


def weighted_mean(sims: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean of neighbour similarities, weighted when ``weights`` is given (all-zero weights: plain mean)."""
    if weights is None or not np.any(weights > 0):
        return float(np.mean(sims))
    return float(np.dot(sims, weights) / np.sum(weights))


def reference_scores(searcher: Searcher, source: VectorSource, k: int = 10, sample: int = REFERENCE_SAMPLE,
                     seed: int = 0, batch: int = 4096, weights: np.ndarray | None = None,
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each sampled row's leave-one-out mean similarity to its top-k neighbours, sorted.

    The similarity-percentile scorer (query side) ranks an upload's top-k mean against this
    distribution with one binary search; a seeded sample of 20,000 rows pins a percentile to
    well under one point. With per-row ``weights`` the same neighbours also give a weighted
    mean (each neighbour's similarity weighted by its own weight), returned second.
    """
    rows = sample_rows(source.n, min(sample, source.n), seed + 3)
    message = (f"reference over {len(rows):,} rows of {source.n:,}: leave-one-out top-{k} mean similarity"
               + (", also weighted" if weights is not None else ""))
    report(log, progress, "reference", message)
    plain, weighted = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        sims, labels = searcher.search(source.take(chunk), k + 1)
        for row, row_sims, row_labels in zip(chunk, sims, labels):
            keep = (row_labels != row) & (row_labels >= 0)
            if keep.any():
                top_sims, top_labels = row_sims[keep][:k], row_labels[keep][:k]
                plain.append(float(np.mean(top_sims)))
                if weights is not None:
                    weighted.append(weighted_mean(top_sims, weights[top_labels]))
    as_sorted = lambda values: np.sort(np.asarray(values, dtype=np.float32))  # noqa: E731
    return as_sorted(plain), (as_sorted(weighted) if weights is not None else None)

