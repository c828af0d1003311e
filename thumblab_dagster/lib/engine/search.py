"""Searching an index the way its manifest says: tuned parameters, exact re-rank, range search.

One ``Searcher`` serves a single index and a sharded one alike: it holds one or more faiss
indices ("parts") whose labels are global row positions, the tuned search parameters, and,
for compressed (PQ) indices, the stored float32 vectors used to re-rank candidates exactly.

Each search picks its OpenMP threads (``faiss_threads(threads_for(n_queries))``): one query runs
on one thread, a batch on every core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

LOSSY = re.compile(r"PQ\d|SQ\d|LSH|RaBitQ")
IVF = re.compile(r"IVF(\d+)")

# --- OpenMP threads per call ------------------------------------------------------------------
# A single query is fastest on one OpenMP thread: a team of threads costs more to wake and join
# than its share of a 13,500 x 512 scan saves (p50 2.09 ms on 1 thread, 2.95 ms on 2 on this 2-core
# AVX2 EPYC, benchmarks/query_latency.py; DESIGN.md's machine: 0.80 and 1.93), and
# on a busy machine a spinning team is worse still. Batches want every core. faiss-cpu's wheel
# ships GNU libgomp, whose thread count (the nthreads-var ICV) belongs to the calling thread:
# omp_set_num_threads in one Python thread leaves the others, and threads started later, on the
# process default (measured). So each call sets its own count and restores it, and concurrent
# service threads never race one process-wide value.
ALL_THREADS = max(1, faiss.omp_get_max_threads())  # the process default: OMP_NUM_THREADS, else the usable CPUs
SERIAL_MAX_QUERIES = 1  # up to this many queries run on one thread (2 queries already gain from 2 threads)


def threads_for(n_queries: int) -> int:
    """OpenMP threads for a search of ``n_queries``: 1 for a single query, every core for a batch."""
    return 1 if n_queries <= SERIAL_MAX_QUERIES else ALL_THREADS


@contextmanager
def faiss_threads(n: int) -> Iterator[int]:
    """faiss's OpenMP thread count for the calling thread inside the block, restored after.

    Per thread (libgomp): other threads' searches are not affected.
    """
    before = faiss.omp_get_max_threads()
    if n == before:
        yield n
        return
    faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        faiss.omp_set_num_threads(before)


def is_lossy(factory: str) -> bool:
    """True when the index stores compressed codes, so its similarities are approximate."""
    return bool(LOSSY.search(factory or ""))


def is_exact(factory: str) -> bool:
    """True for brute-force indices: every search already returns the exact top-k."""
    return (factory or "Flat") == "Flat"


def nlist_of(factory: str) -> int | None:
    match = IVF.search(factory or "")
    return int(match.group(1)) if match else None


def tunable_params(factory: str) -> list[str]:
    """The knobs ``tune`` turns for a factory string, cheapest-first."""
    params = []
    if nlist_of(factory):
        params.append("nprobe")
    elif "HNSW" in (factory or ""):
        params.append("efSearch")
    if is_lossy(factory):
        params.append("rerank_factor")
    return params


def apply_params(index: faiss.Index, params: dict) -> None:
    """Set faiss search parameters (nprobe, efSearch) through any wrapper (OPQ, IDMap)."""
    names = [name for name in params if name != "rerank_factor"]  # rerank_factor is ours (Searcher.search)
    if not names:
        return  # a Flat index has none: skip the ParameterSpace (~20 us of a single query's budget)
    space = faiss.ParameterSpace()
    for name in names:
        space.set_index_parameter(index, name, params[name])


RERANK_GATHER_FLOATS = 8 * 1024 * 1024   # candidate floats gathered at once when re-ranking (32 MB)


def _scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Exact similarity (inner product) or squared L2 distance, one row of candidates per query."""
    if metric == "inner_product":
        return np.einsum("qd,qkd->qk", queries, vectors)
    diff = vectors - queries[:, None, :]
    return np.einsum("qkd,qkd->qk", diff, diff)


@dataclass
class RangeHits:
    positions: np.ndarray
    scores: np.ndarray


@dataclass
class Searcher:
    parts: list[faiss.Index]          # labels are global positions
    metric: str = "inner_product"
    params: dict = field(default_factory=dict)
    stored: np.ndarray | None = None   # row-ordered float32 vectors for exact re-rank (memmap)
    range_margin: float = 0.0          # how far an approximate score may sit from the exact one

    def _apply(self) -> None:
        # Parameters live on the shared faiss objects: set them on every call, so a derived
        # searcher (tuning trials, validators) never leaves its settings behind for this one.
        for part in self.parts:
            apply_params(part, self.params)

    @property
    def ntotal(self) -> int:
        return int(sum(p.ntotal for p in self.parts))

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "inner_product"

    def with_params(self, **params) -> Searcher:
        return Searcher(self.parts, self.metric, {**self.params, **params}, self.stored, self.range_margin)

    def _best(self, scores: np.ndarray, labels: np.ndarray, k: int):
        scores = np.where(labels < 0, -np.inf if self.higher_is_better else np.inf, scores)
        order = np.argsort(-scores if self.higher_is_better else scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)

    def _raw_search(self, queries: np.ndarray, k: int):
        self._apply()
        parts = [p.search(queries, min(k, p.ntotal)) for p in self.parts if p.ntotal]
        if len(parts) == 1:
            return parts[0]
        return (np.concatenate([d for d, _ in parts], axis=1), np.concatenate([i for _, i in parts], axis=1))

    def rerank(self, queries: np.ndarray, labels: np.ndarray):
        """Exact scores of candidate positions from the stored vectors (-1 stays -1)."""
        # Queries in chunks: deep re-ranks of many queries (tuning) would otherwise gather
        # queries x depth x d floats at once (500 x 2560 x 128: 655 MB).
        per_chunk = max(1, RERANK_GATHER_FLOATS // max(1, labels.shape[1] * queries.shape[1]))
        if len(queries) > per_chunk:
            return np.concatenate([self.rerank(queries[i:i + per_chunk], labels[i:i + per_chunk])
                                   for i in range(0, len(queries), per_chunk)])
        safe = np.where(labels < 0, 0, labels)
        flat = safe.ravel()
        order = np.argsort(flat, kind="stable")  # read the memory map in file order
        gathered = np.empty((len(flat), queries.shape[1]), dtype=np.float32)
        gathered[order] = self.stored[flat[order]]
        return _scores(queries, gathered.reshape(*labels.shape, -1), self.metric)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, global positions); scores are exact when stored vectors re-rank."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ntotal = self.ntotal
        k = min(k, max(ntotal, 1))
        if not ntotal:
            return np.full((len(queries), k), np.nan, np.float32), np.full((len(queries), k), -1, np.int64)
        factor = int(self.params.get("rerank_factor", 1))
        depth = k * factor if self.stored is not None else k
        with faiss_threads(threads_for(len(queries))):
            scores, labels = self._raw_search(queries, depth)
        if self.stored is not None:
            scores = self.rerank(queries, labels)
        elif len(self.parts) == 1 and labels.shape[1] == k and not (labels < 0).any():
            return scores, labels  # one part, nothing re-scored: faiss already ranked them
        return self._best(scores, labels, k)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[RangeHits]:
        """Every candidate whose *exact* similarity is >= threshold (distance <= for L2).

        A compressed index is asked with the threshold widened by ``range_margin`` and its
        candidates are re-scored exactly, so nothing above the threshold among them is dropped
        for an approximation error, and every returned score is exact.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        widen = self.range_margin if self.stored is not None else 0.0
        radius = threshold - widen if self.higher_is_better else threshold + widen
        per_query = [([], []) for _ in range(len(queries))]
        self._apply()
        # faiss keeps IP results > radius and L2 results < radius; nudge so equality is kept
        nudged = float(np.nextafter(np.float32(radius), np.float32(-np.inf if self.higher_is_better else np.inf)))
        for part in self.parts:
            if not part.ntotal:
                continue
            with faiss_threads(threads_for(len(queries))):
                lims, dist, labels = part.range_search(queries, nudged)
            for q in range(len(queries)):
                per_query[q][0].append(labels[lims[q]:lims[q + 1]])
                per_query[q][1].append(dist[lims[q]:lims[q + 1]])
        hits = []
        for q, (labels, dist) in enumerate(per_query):
            labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
            dist = np.concatenate(dist) if dist else np.empty(0, np.float32)
            if self.stored is not None and len(labels):
                dist = self.rerank(queries[q:q + 1], labels[None, :])[0]
            keep = dist >= threshold if self.higher_is_better else dist <= threshold
            labels, dist = labels[keep], dist[keep]
            order = np.argsort(-dist if self.higher_is_better else dist, kind="stable")
            hits.append(RangeHits(labels[order].astype(np.int64), dist[order].astype(np.float32)))
        return hits

    def reconstruct(self, position: int, from_codes: bool = False) -> np.ndarray:
        """The vector of a global position: the stored float32 row when there is one, else (or
        with ``from_codes``) what the index itself holds, decoded."""
        if self.stored is not None and not from_codes:
            return np.asarray(self.stored[int(position)], dtype=np.float32)
        for part in self.parts:
            try:
                return part.reconstruct(int(position))
            except RuntimeError:
                ivf = _ivf_or_none(part)
                if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.make_direct_map()
                    try:
                        return part.reconstruct(int(position))
                    except RuntimeError:
                        continue
        raise IndexError(f"position {position} is in no part of the index")


def _ivf_or_none(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def finds_itself(target, found, scores, tolerance: float = 1e-6) -> bool:
    """``target`` is ranked first, or tied with the first (identical vectors' order is arbitrary)."""
    return bool(len(found)) and (found[0] == target or any(
        f == target and abs(s - scores[0]) <= tolerance for f, s in zip(found, scores)))


def validation_params(factory: str, params: dict) -> dict:
    """Search settings generous enough that a stored vector always finds itself (validators)."""
    out = dict(params)
    nlist = nlist_of(factory)
    if nlist:
        out["nprobe"] = min(nlist, max(int(params.get("nprobe", 1)) * 4, 64))
        if "quantizer_efSearch" in params:
            out["quantizer_efSearch"] = max(int(params["quantizer_efSearch"]), 2 * out["nprobe"])
    elif "HNSW" in (factory or ""):
        out["efSearch"] = max(int(params.get("efSearch", 16)), 256)
    if is_lossy(factory):
        out["rerank_factor"] = max(int(params.get("rerank_factor", 1)), 8)
    return out
