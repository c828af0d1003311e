"""Which FAISS index fits a collection: a documented rule table, no magic.

``choose_index(n, d, memory_budget_bytes, metric)`` returns a faiss factory string:

| rule | when | factory | why |
|---|---|---|---|
| 1 | n <= 20,000 and the raw vectors fit | ``Flat`` | exact, no training; a single query over 20k x 512 takes well under a millisecond |
| 2 | n <= 500,000 and vectors + HNSW graph fit | ``HNSW32`` | best latency/recall with no training; build time grows fast past ~500k on few cores |
| 3 | the raw vectors fit | ``IVF{nlist},Flat`` (``IVF{nlist}_HNSW32,Flat`` from 1M) | stores exact vectors, fast to build; an HNSW coarse quantizer keeps large nlist cheap |
| 4 | otherwise | ``OPQ{m}_{D},IVF{nlist},PQ{m}`` | compressed to m bytes a vector; OPQ rotates (and, when d is not a multiple of m, reduces) to D = a multiple of m; exact re-ranking comes from the stored vectors |

nlist is a power of two near 4 * sqrt(n), clipped to [64, 65536] and to n / 39 so that every
centroid gets at least 39 training points (faiss's own minimum). m is the largest PQ size in
(64, 48, 32, 24, 16, 8) whose codes fit the budget.
"""

from __future__ import annotations

import math

FLAT_MAX = 20_000
HNSW_MAX = 500_000
HNSW_M = 32
IVF_HNSW_FROM = 1_000_000
PQ_SIZES = (64, 48, 32, 24, 16, 8)
ID_BYTES = 8  # IVF lists store an int64 id per vector
METRICS = ("inner_product", "l2")


def _nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    nlist = min(max(nlist, 64), 65536)
    return max(1, min(nlist, n // 39))


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Rough resident size of an index built with ``factory`` over n vectors of dimension d."""
    if factory == "Flat":
        return 4 * n * d
    if factory.startswith("HNSW"):
        return 4 * n * d + n * HNSW_M * 2 * 4
    if factory.endswith(",Flat"):
        return (4 * d + ID_BYTES) * n
    m = int(factory.rsplit("PQ", 1)[1].split("x")[0])
    return (m + ID_BYTES) * n


def choose_index(n: int, d: int, memory_budget_bytes: int, metric: str = "inner_product") -> str:
    """The factory string for ``n`` vectors of dimension ``d`` within ``memory_budget_bytes``."""
    if n < 0 or d < 1 or memory_budget_bytes <= 0:
        raise ValueError(f"need n >= 0, d >= 1 and a positive memory budget; got n={n}, d={d}, "
                         f"budget={memory_budget_bytes}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if n <= FLAT_MAX and estimate_bytes("Flat", n, d) <= memory_budget_bytes:
        return "Flat"
    if n <= HNSW_MAX and estimate_bytes(f"HNSW{HNSW_M}", n, d) <= memory_budget_bytes:
        return f"HNSW{HNSW_M}"
    nlist = _nlist(n)
    coarse = f"IVF{nlist}_HNSW32" if n >= IVF_HNSW_FROM else f"IVF{nlist}"
    if estimate_bytes(f"{coarse},Flat", n, d) <= memory_budget_bytes:
        return f"{coarse},Flat"
    for m in PQ_SIZES:
        if m > d:
            continue
        if (m + ID_BYTES) * n <= memory_budget_bytes:
            # OPQ's output dimension must be a multiple of m; keep d when it already is.
            out_dim = d if d % m == 0 else max(m, (d // m) * m)
            return f"OPQ{m}_{out_dim},{coarse},PQ{m}"
    raise ValueError(f"{n:,} vectors do not fit in {memory_budget_bytes:,} bytes even at 8 bytes a vector "
                     f"(needs about {(PQ_SIZES[-1] + ID_BYTES) * n:,}): raise the budget or shard the collection")
