"""Numbers a person wants about an index: size, speed, self-retrieval, neighbour similarity."""

from __future__ import annotations

import io
import time

import numpy as np

from thumblab_dagster.lib.engine.index_dir import LoadedIndex, as_float32
from thumblab_dagster.lib.engine.search import finds_itself

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _stored_vectors(loaded: LoadedIndex, rows: np.ndarray) -> np.ndarray:
    return as_float32(np.vstack([loaded.reconstruct(int(r)) for r in rows]))


def measure(loaded: LoadedIndex, k: int = 10, sample: int = 200, seed: int = 0) -> dict:
    """Latency of single-query searches (ms), self-retrieval rate and neighbour similarities.

    Queries are a seeded sample of the index's own vectors, searched one at a time as the
    scoring service does. The nearest-neighbour similarity of a row is its best match other
    than itself.
    """
    n = loaded.ntotal
    if n == 0:
        return {"sampled_queries": 0, "latency_ms_p50": None, "latency_ms_p99": None,
                "self_retrieval_rate": None, "nn_similarity": [], "nn_similarity_quantiles": {}}
    rows = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    queries = _stored_vectors(loaded, rows)
    kk = min(k, n)
    loaded.search(queries[:1], kk)  # warm-up, not counted
    latencies, self_hits, nn = [], 0, []
    for row, query in zip(rows, queries):
        start = time.perf_counter()
        sims, positions = loaded.search(query[None, :], kk)
        latencies.append((time.perf_counter() - start) * 1000.0)
        self_hits += int(finds_itself(row, positions[0], sims[0]))
        others = [s for s, p in zip(sims[0], positions[0]) if p != row and p >= 0]
        if others:
            nn.append(float(others[0]))
    nn_arr = np.asarray(nn, dtype=np.float64)
    return {
        "sampled_queries": int(len(rows)),
        "k": kk,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "self_retrieval_rate": self_hits / len(rows),
        "nn_similarity": nn,
        "nn_similarity_quantiles": ({f"p{int(q * 100):02d}": float(np.quantile(nn_arr, q)) for q in QUANTILES}
                                    if nn else {}),
    }


def histogram_png(values, title: str, xlabel: str = "cosine similarity") -> bytes:
    """A small histogram as PNG bytes (for the Dagster UI's markdown metadata)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 2.6), dpi=100)
    ax = fig.add_subplot()
    if len(values):
        ax.hist(values, bins=30, color="#4f6fd8", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("rows", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
