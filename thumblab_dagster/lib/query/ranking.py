"""Percentiles against a sorted reference, and leaving the query itself out of its neighbours.

Shared by the local snapshot and by remote searches, so both rank a query as the reference
was built: the mean similarity of its top-k *other* vectors.
"""

from __future__ import annotations

import numpy as np

SELF_MATCH = 1.0 - 1e-5  # a neighbour this similar is the query itself (float32 rounding of 1.0)


def percentile_of(value: float, reference: np.ndarray) -> float:
    """Share (0..100) of the sorted reference at or below ``value``."""
    return float(np.searchsorted(reference, value, side="right")) * 100.0 / len(reference)


def without_self(similarities, k: int) -> slice:
    """The top-k neighbours leaving one out: a query that is itself a reference skips its own match."""
    if len(similarities) > 1 and similarities[0] >= SELF_MATCH:
        return slice(1, k + 1)
    return slice(0, k)
