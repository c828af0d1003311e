"""Tuning: the cheapest search setting that reaches a recall target, proven on held-out queries."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import faiss
import numpy as np

from thumblab_dagster.lib.engine.index_dir import METRICS, as_float32
from thumblab_dagster.lib.engine.search import Searcher, is_exact, nlist_of, tunable_params
from thumblab_dagster.lib.engine.sources import DEFAULT_BATCH, VectorSource, open_source, sample_rows

log = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
TUNE_QUERIES = 400                   # split in two: one half tunes, the other proves
TUNING_HEADROOM = 0.01               # ~2 standard errors of recall@10 on 200 queries: held-out must hold too
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
RERANK_STEPS = (1, 2, 4, 8, 16, 32, 64)
PLATEAU = 0.002                      # recall gained by the next step below which a search axis stops


def exact_neighbours(source: VectorSource, queries: np.ndarray, k: int, metric: str,
                     batch_size: int = DEFAULT_BATCH, exclude: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k positions by streaming the source; ``exclude[i]`` drops query i's own row."""
    extra = 1 if exclude is not None else 0
    heap = faiss.ResultHeap(len(queries), k + extra, keep_max=metric == "inner_product")
    for start, batch in source.batches(batch_size):
        dist, idx = faiss.knn(queries, batch, min(k + extra, len(batch)), metric=METRICS[metric])
        pad = k + extra - dist.shape[1]
        if pad:
            fill = -np.inf if metric == "inner_product" else np.inf
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=fill)
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(np.ascontiguousarray(dist, dtype=np.float32),
                        np.ascontiguousarray(np.where(idx < 0, -1, idx + start), dtype=np.int64))
    heap.finalize()
    return _drop_own(heap.I, exclude, k)


def _drop_own(labels: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
    if exclude is None:
        return labels[:, :k]
    out = np.empty((len(labels), k), dtype=np.int64)
    for i, row in enumerate(labels):
        out[i] = row[row != exclude[i]][:k] if (row == exclude[i]).any() else row[:k]
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k]) & set(t) - {-1}) for f, t in zip(found, truth))
    return hits / max(1, sum(len(set(t) - {-1}) for t in truth))


@dataclass
class Trial:
    params: dict
    recall: float
    ms_per_query: float


def _trial(searcher: Searcher, params: dict, queries: np.ndarray, truth: np.ndarray, k: int,
           exclude: np.ndarray | None) -> Trial:
    tuned = searcher.with_params(**params)
    tuned.search(queries[:8], k + 1)  # warm-up: first touches of pages and caches are not the setting's cost
    start = time.perf_counter()
    _, found = tuned.search(queries, k + (1 if exclude is not None else 0))
    elapsed = time.perf_counter() - start
    return Trial(dict(params), recall_at_k(_drop_own(found, exclude, k), truth), 1000.0 * elapsed / len(queries))


def _grid(factory: str) -> list[list[dict]]:
    """Search axes, each a list of settings from cheapest to most thorough."""
    nlist = nlist_of(factory)
    axes = []
    for name in tunable_params(factory):
        if name == "nprobe":
            steps = [p for p in NPROBE_STEPS if p <= nlist] or [1]
            # An HNSW coarse quantizer must explore at least nprobe centroids to return them.
            hnsw_coarse = f"IVF{nlist}_HNSW" in factory
            axes.append([{"nprobe": p, **({"quantizer_efSearch": max(64, 2 * p)} if hnsw_coarse else {})}
                         for p in steps])
        elif name == "efSearch":
            axes.append([{"efSearch": e} for e in EF_STEPS])
        else:
            axes.append([{"rerank_factor": r} for r in RERANK_STEPS])
    return axes


def tune(searcher: Searcher, factory: str, source: VectorSource, *, k: int = 10,
         target_recall: float = DEFAULT_TARGET_RECALL, queries: np.ndarray | None = None,
         n_queries: int = TUNE_QUERIES, seed: int = 0) -> dict:
    """Cheapest setting reaching ``target_recall`` on tuning queries, proven on held-out ones.

    Without ``queries``, a seeded sample of the collection's own rows is used, each query's
    own row left out of both the truth and the answer. The sample is split in two halves:
    the first picks the setting, the second (never seen while picking) measures it.
    """
    metric = searcher.metric
    exclude = None
    if queries is None:
        rows = sample_rows(source.n, min(n_queries, source.n), seed + 1)
        shuffle = np.random.default_rng(seed + 2).permutation(len(rows))  # halves span the collection
        queries, exclude = source.take(rows)[shuffle], rows[shuffle]
    queries = as_float32(queries)
    half = len(queries) // 2
    truth = exact_neighbours(source, queries, k, metric, exclude=exclude)
    tune_q, held_q = queries[:half], queries[half:]
    tune_t, held_t = truth[:half], truth[half:]
    tune_x = exclude[:half] if exclude is not None else None
    held_x = exclude[half:] if exclude is not None else None

    axes = _grid(factory)
    trials: list[Trial] = []
    reaching: list[Trial] = []
    outer = axes[1] if len(axes) > 1 else [{}]
    for extra in outer:                        # each re-rank depth: the smallest nprobe/ef that reaches
        previous = None
        for step in axes[0]:
            params = {**step, **extra}
            trial = _trial(searcher, params, tune_q, tune_t, k, tune_x)
            trials.append(trial)
            if trial.recall >= min(1.0, target_recall + TUNING_HEADROOM):
                reaching.append(trial)
                break
            if previous is not None and trial.recall - previous.recall < PLATEAU:
                break  # more probes no longer help at this re-rank depth (codes are the limit)
            previous = trial
    chosen = min(reaching, key=lambda t: t.ms_per_query) if reaching else max(trials, key=lambda t: t.recall)
    proof = _trial(searcher, chosen.params, held_q, held_t, k, held_x)
    result = {
        "search_params": chosen.params,
        "target_recall": target_recall,
        "k": k,
        "recall_at_k_tuning": round(chosen.recall, 4),
        "recall_at_k_held_out": round(proof.recall, 4),
        "ms_per_query": round(proof.ms_per_query, 4),
        "tuning_queries": half,
        "held_out_queries": len(queries) - half,
        "queries_from": "collection rows, own row excluded" if exclude is not None else "given",
        "target_met": proof.recall >= target_recall,
        "trials": [{**t.params, "recall": round(t.recall, 4), "ms_per_query": round(t.ms_per_query, 4)}
                   for t in trials],
    }
    if searcher.stored is not None:
        result["range_margin"] = _range_margin(searcher.with_params(**chosen.params), tune_q, k)
    log.info("tuned %s: %s -> recall@%d %.3f on held-out queries, %.3f ms/query", factory,
             chosen.params, k, proof.recall, proof.ms_per_query)
    return result


def verify_recall(loaded, vectors, *, k: int = 10, n_queries: int = 200, seed: int = 7919) -> dict:
    """Re-measure a built index's recall@k with the settings it loads with, on rows other than
    the tuning ones (another seed), against exact search over ``vectors`` (its source rows)."""
    manifest = loaded.manifest
    target = float((manifest.get("tuning") or {}).get("target_recall", DEFAULT_TARGET_RECALL))
    base = {"factory": manifest.get("factory"), "target_recall": target, "search_params": manifest.get("search_params")}
    if is_exact(manifest.get("factory")) or not loaded.ntotal:
        return {**base, "exact": True, "recall": 1.0, "passed": True, "queries": 0}
    source = open_source(vectors)
    rows = sample_rows(source.n, min(n_queries, source.n), seed)
    queries = source.take(rows)
    truth = exact_neighbours(source, queries, k, loaded.searcher.metric, exclude=rows)
    _, found = loaded.searcher.search(queries, k + 1)
    measured = recall_at_k(_drop_own(found, rows, k), truth)
    return {**base, "exact": False, "recall": round(measured, 4), "passed": measured >= target,
            "queries": len(rows), "recorded_recall": (manifest.get("tuning") or {}).get("recall_at_k_held_out")}



def _range_margin(searcher: Searcher, queries: np.ndarray, k: int) -> float:
    """The largest gap seen between approximate and exact scores, with headroom (range search)."""
    raw_scores, labels = searcher._raw_search(queries, k * 4)
    exact = searcher.rerank(queries, labels)
    valid = labels >= 0
    gap = np.abs(raw_scores[valid] - exact[valid])
    return float(gap.max()) if gap.size else 0.0

