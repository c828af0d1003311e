"""Tuning: the cheapest search setting whose recall is *promised*, proven on held-out queries.

Queries (a seeded sample of the collection's rows, each leaving its own row out, or queries
given from outside the collection) are shuffled and split in two halves. The tuning half
walks the search grid; candidate settings are then checked cheapest-first on the held-out
half, and the first whose held-out recall has a lower 95% confidence bound at or above the
target is chosen. A point estimate that just touches the target is a coin flip on the next
queries; the bound is what the index can promise (issue 10: 0.95 promised, 0.941 delivered).

Up to ``MAX_HELD_OUT_CHECKS`` settings are checked on the same held-out half, and each look is
one more chance that a setting passes by luck. The promise is kept for all the looks together
(Bonferroni): every bound is taken at the one-sided level 0.05 / ``MAX_HELD_OUT_CHECKS``, in the
bootstrap quantile and in the Wilson z alike, so the chance that any look passes a setting
whose true recall misses the target stays at most 5%. The tuning half uses the same level, so
the candidates it proposes are ones the held-out half can confirm. The manifest's tuning block
records the correction (``correction``, ``look_level``, ``looks_allowed``).

The bound (``recall_lower_bound``) is the smaller of two one-sided bounds:
- a bootstrap over queries (recall's ``level`` quantile over resampled query sets): the k
  neighbours of one query are found or missed together (same probed lists, same codes), so
  they are not k independent trials and only resampling whole queries gets the spread right;
- a Wilson score bound on hits / possible: when every sampled query is perfect the bootstrap
  has no spread at all and would promise 1.0 from a handful of queries; Wilson does not.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from statistics import NormalDist

import faiss
import numpy as np

from thumblab_dagster.lib.engine.index_dir import METRICS, as_float32
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.search import Searcher, is_exact, nlist_of, tunable_params
from thumblab_dagster.lib.engine.sources import DEFAULT_BATCH, VectorSource, open_source, sample_rows

log = logging.getLogger(__name__)

DEFAULT_TARGET_RECALL = 0.95
TUNE_QUERIES = 1000                  # split in two: one half tunes, the other proves (500 each)
ERROR = 0.05                         # one-sided: a 95% promise, over all the looks at the held-out half together
BOOTSTRAP_RESAMPLES = 2000
MAX_HELD_OUT_CHECKS = 8              # each check of the held-out half is one more chance of a lucky pass
LOOK_LEVEL = ERROR / MAX_HELD_OUT_CHECKS   # Bonferroni: the error each look may spend
CORRECTION = "bonferroni"
BOUND_METHOD = (f"min(bootstrap over queries, Wilson on hits/possible), one-sided at level "
                f"{ERROR:g}/{MAX_HELD_OUT_CHECKS} per look (Bonferroni): 95% over all held-out looks")
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
RERANK_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # deep steps: codes that cannot separate near-ties
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


def hits_per_query(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true neighbours found, true neighbours there are) for each query."""
    k = truth.shape[1]
    valid = truth >= 0
    hit = (truth[:, :, None] == found[:, None, :k]).any(axis=2) & valid
    return hit.sum(axis=1), valid.sum(axis=1)


def z_one_sided(level: float) -> float:
    """The normal quantile of a one-sided bound at error ``level`` (0.05: 1.645)."""
    return NormalDist().inv_cdf(1.0 - level)


def wilson_lower(hits: int, n: int, z: float = z_one_sided(ERROR)) -> float:
    """One-sided Wilson score lower bound of a proportion."""
    if n <= 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def recall_lower_bound(hits: np.ndarray, possible: np.ndarray, seed: int = 0,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = ERROR) -> float:
    """A one-sided lower confidence bound of recall at error ``level`` (one look: 0.05, a 95%
    bound; ``tune`` passes ``LOOK_LEVEL``). See the module docstring for why both bounds."""
    n, total = len(hits), int(possible.sum())
    if n == 0 or total == 0:
        return 0.0
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    resampled = hits[picks].sum(axis=1) / np.maximum(possible[picks].sum(axis=1), 1)
    bootstrap = float(np.quantile(resampled, level))
    return min(bootstrap, wilson_lower(int(hits.sum()), total, z_one_sided(level)))


@dataclass
class Trial:
    params: dict
    recall: float
    lower_bound: float
    ms_per_query: float


@dataclass
class QuerySet:
    queries: np.ndarray
    truth: np.ndarray
    exclude: np.ndarray | None   # each query's own row (collection rows), or None (given queries)

    def __len__(self) -> int:
        return len(self.queries)


def _trial(searcher: Searcher, params: dict, half: QuerySet, k: int, seed: int) -> Trial:
    tuned = searcher.with_params(**params)
    own = 1 if half.exclude is not None else 0
    tuned.search(half.queries[:8], k + own)  # warm-up: first touches of pages and caches are not the setting's cost
    start = time.perf_counter()
    _, found = tuned.search(half.queries, k + own)
    elapsed = time.perf_counter() - start
    hits, possible = hits_per_query(_drop_own(found, half.exclude, k), half.truth)
    bound = recall_lower_bound(hits, possible, seed, level=LOOK_LEVEL)
    return Trial(dict(params), float(hits.sum() / max(1, possible.sum())), bound, 1000.0 * elapsed / max(1, len(half)))


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


def _query_halves(source: VectorSource, queries: np.ndarray | None, k: int, metric: str, n_queries: int,
                  seed: int) -> tuple[QuerySet, QuerySet, str]:
    """Tuning and held-out halves: the collection's own rows (own row excluded) or given queries,
    shuffled alike so both halves span the same ground."""
    exclude = None
    if queries is None:
        rows = sample_rows(source.n, min(n_queries, source.n), seed + 1)
        queries, exclude, origin = source.take(rows), rows, "collection rows, own row excluded"
    else:
        queries, origin = as_float32(queries), "given"
        if queries.shape[1] != source.d:
            raise ValueError(f"tune_queries have {queries.shape[1]} dimensions, the vectors {source.d}")
    shuffle = np.random.default_rng(seed + 2).permutation(len(queries))
    queries = queries[shuffle]
    exclude = exclude[shuffle] if exclude is not None else None
    truth = exact_neighbours(source, queries, k, metric, exclude=exclude)
    half = len(queries) // 2
    split = lambda part: QuerySet(queries[part], truth[part],  # noqa: E731
                                  exclude[part] if exclude is not None else None)
    return split(slice(0, half)), split(slice(half, None)), origin


@dataclass
class Ladder:
    """One re-rank depth: the first setting whose tuning-half bound reached the target, and the
    next steps up, measured only if the held-out half refuses the one below."""
    trial: Trial
    above: list[dict]


def _ladders(searcher: Searcher, axes: list[list[dict]], tuning: QuerySet, k: int, target: float,
             seed: int, trials: list[Trial]) -> list[Ladder]:
    ladders = []
    outer = axes[1] if len(axes) > 1 else [{}]
    for extra in outer:                        # each re-rank depth: the smallest nprobe/ef that reaches
        previous = None
        for position, step in enumerate(axes[0]):
            trial = _trial(searcher, {**step, **extra}, tuning, k, seed)
            trials.append(trial)
            if trial.lower_bound >= target:
                ladders.append(Ladder(trial, [{**above, **extra} for above in axes[0][position + 1:]]))
                break
            if previous is not None and trial.recall - previous.recall < PLATEAU:
                break  # more probes no longer help at this re-rank depth (codes are the limit)
            previous = trial
    return ladders


def tune(searcher: Searcher, factory: str, source: VectorSource, *, k: int = 10,
         target_recall: float = DEFAULT_TARGET_RECALL, queries: np.ndarray | None = None,
         n_queries: int = TUNE_QUERIES, seed: int = 0,
         progress: Progress | None = None) -> dict:
    """The cheapest setting whose held-out recall@k has a lower 95% bound >= ``target_recall``,
    the 95% holding over every held-out look together (Bonferroni, see the module docstring).

    Without ``queries``, a seeded sample of the collection's own rows is used, each query's
    own row left out of both the truth and the answer; ``queries`` from outside the collection
    are split the same way, with nothing left out. When no setting can promise the target, the
    one with the best held-out bound is kept and ``target_met`` is False.
    """
    tuning, held_out, origin = _query_halves(source, queries, k, searcher.metric, n_queries, seed)
    report(log, progress, "tune", f"tuning {factory}: {len(tuning)} tuning + {len(held_out)} held-out queries ({origin}), "
                      f"target recall@{k} {target_recall} (lower 95% bound)")
    trials: list[Trial] = []
    ladders = _ladders(searcher, _grid(factory), tuning, k, target_recall, seed, trials)
    checked: list[tuple[Trial, Trial]] = []   # (tuning trial, held-out proof), cheapest first
    while ladders and len(checked) < MAX_HELD_OUT_CHECKS:
        ladder = min(ladders, key=lambda candidate: candidate.trial.ms_per_query)
        proof = _trial(searcher, ladder.trial.params, held_out, k, seed + 1)
        checked.append((ladder.trial, proof))
        if proof.lower_bound >= target_recall:
            break
        if ladder.above:  # the held-out half disagrees: one step up this depth
            ladder.trial = _trial(searcher, ladder.above.pop(0), tuning, k, seed)
            trials.append(ladder.trial)
        else:
            ladders.remove(ladder)
    if not checked:  # nothing reached the target even on the tuning half: prove the best there is
        best = max(trials, key=lambda t: (t.lower_bound, t.recall))
        checked.append((best, _trial(searcher, best.params, held_out, k, seed + 1)))
    met = checked[-1][1].lower_bound >= target_recall
    candidate, proof = checked[-1] if met else max(checked, key=lambda pair: pair[1].lower_bound)
    result = {
        "search_params": candidate.params,
        "target_recall": target_recall,
        "k": k,
        "recall_at_k_tuning": round(candidate.recall, 4),
        "recall_at_k_held_out": round(proof.recall, 4),
        "recall_lower_bound_95": round(proof.lower_bound, 4),
        "bound": BOUND_METHOD,
        "correction": CORRECTION,
        "look_level": LOOK_LEVEL,
        "looks_allowed": MAX_HELD_OUT_CHECKS,
        "held_out_checks": len(checked),
        "ms_per_query": round(proof.ms_per_query, 4),
        "tuning_queries": len(tuning),
        "held_out_queries": len(held_out),
        "queries_from": origin,
        "target_met": bool(met),
        "trials": [{**t.params, "recall": round(t.recall, 4), "lower_bound": round(t.lower_bound, 4),
                    "ms_per_query": round(t.ms_per_query, 4)} for t in trials],
    }
    if searcher.stored is not None:
        result["range_margin"] = _range_margin(searcher.with_params(**candidate.params), tuning.queries, k)
    report(log, progress, "tune", f"tuned {factory}: {candidate.params} -> recall@{k} {proof.recall:.3f} on "
                      f"{len(held_out)} held-out queries, lower 95% bound {proof.lower_bound:.3f} "
                      f"({'meets' if result['target_met'] else 'MISSES'} the target {target_recall}), "
                      f"{proof.ms_per_query:.3f} ms/query")
    return result


def verify_recall(loaded, vectors, *, k: int = 10, n_queries: int = 200, seed: int = 7919) -> dict:
    """Re-measure a built index's recall@k with the settings it loads with, on rows other than
    the tuning ones (another seed), against exact search over ``vectors`` (its source rows)."""
    manifest = loaded.manifest
    tuning = manifest.tuning
    target = float(tuning.target_recall if tuning else DEFAULT_TARGET_RECALL)
    base = {"factory": manifest.factory, "target_recall": target, "search_params": manifest.search_params}
    if is_exact(manifest.factory) or not loaded.ntotal:
        return {**base, "exact": True, "recall": 1.0, "passed": True, "queries": 0}
    source = open_source(vectors)
    rows = sample_rows(source.n, min(n_queries, source.n), seed)
    queries = source.take(rows)
    truth = exact_neighbours(source, queries, k, loaded.searcher.metric, exclude=rows)
    _, found = loaded.searcher.search(queries, k + 1)
    hits, possible = hits_per_query(_drop_own(found, rows, k), truth)
    measured = float(hits.sum() / max(1, possible.sum()))
    return {**base, "exact": False, "recall": round(measured, 4), "passed": measured >= target,
            "recall_lower_bound_95": round(recall_lower_bound(hits, possible, seed), 4), "queries": len(rows),
            "recorded_recall": tuning.recall_at_k_held_out if tuning else None,
            "recorded_lower_bound": tuning.recall_lower_bound_95 if tuning else None}


def _range_margin(searcher: Searcher, queries: np.ndarray, k: int) -> float:
    """The largest gap seen between approximate and exact scores, with headroom (range search)."""
    raw_scores, labels = searcher._raw_search(queries, k * 4)
    exact = searcher.rerank(queries, labels)
    valid = labels >= 0
    gap = np.abs(raw_scores[valid] - exact[valid])
    return float(gap.max()) if gap.size else 0.0

