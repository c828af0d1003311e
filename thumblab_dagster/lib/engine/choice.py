"""Which FAISS index fits a collection: a documented rule table, no magic.

``choose_index(n, d, memory_budget_bytes, metric)`` returns a faiss factory string:

| rule | when | factory | why |
|---|---|---|---|
| 1 | n <= 20,000 and the raw vectors fit | ``Flat`` | exact, no training; a single query over 20k x 512 takes well under a millisecond |
| 2 | n <= 500,000 and vectors + HNSW graph fit | ``HNSW32`` | best latency/recall with no training; build time grows fast past ~500k on few cores |
| 3 | the raw vectors fit | ``IVF{nlist},Flat`` (``IVF{nlist}_HNSW32,Flat`` from 1M) | stores exact vectors, fast to build; an HNSW coarse quantizer keeps large nlist cheap |
| 4 | otherwise | ``IVF{nlist},PQ{m}`` (``PCAR{D},IVF{nlist},PQ{m}`` when m does not divide d) | compressed to m bytes a vector; exact re-ranking from the stored float32 vectors (memory-mapped) restores the recall |

nlist is a power of two near 4 * sqrt(n), clipped to [64, 65536] and to n / 39 so that every
centroid gets at least 39 training points (faiss's own minimum). m is the largest PQ size in
(64, 48, 32, 24, 16, 8) that divides d and whose codes fit the budget; when none divides d,
the largest that fits, after PCAR (a PCA rotation) reduces d to D, the largest multiple of m.

Why not OPQ: its training costs minutes on two cores (153 s for OPQ64_512 on 65,536 x 512,
measured against 9 s for IVF1024,PQ64), and what it buys in code accuracy the exact re-rank
stage buys back at search time.
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
    fitting = [m for m in PQ_SIZES if m <= d and (m + ID_BYTES) * n <= memory_budget_bytes]
    dividing = [m for m in fitting if d % m == 0]
    if dividing:
        return f"{coarse},PQ{dividing[0]}"
    if fitting:
        return f"PCAR{(d // fitting[0]) * fitting[0]},{coarse},PQ{fitting[0]}"
    raise ValueError(f"{n:,} vectors do not fit in {memory_budget_bytes:,} bytes even at 8 bytes a vector "
                     f"(needs about {(PQ_SIZES[-1] + ID_BYTES) * n:,}): raise the budget or shard the collection")
