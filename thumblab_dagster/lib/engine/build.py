"""The index engine: choose, train on a sample, add in batches, tune to a target recall, write.

Vectors come from a ``VectorSource`` (an array, a memory-mapped ``.npy`` or an embeddings
parquet) and are streamed in batches, so peak memory stays near index size + training sample
+ two batches. Compressed (PQ) indices also get ``vectors.npy``, the float32 vectors in row
order, written batch by batch and memory-mapped by readers for the exact re-rank stage.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from thumblab_dagster.lib.engine.choice import choose_index
from thumblab_dagster.lib.engine.index_dir import (
    METRICS,
    REFERENCE_FILE,
    VECTORS_FILE,
    WEIGHTED_REFERENCE_FILE,
    as_float32,
    write_index_dir,
)
from thumblab_dagster.lib.engine.search import Searcher, is_exact, is_lossy, nlist_of, tunable_params
from thumblab_dagster.lib.engine.shards import labelled_part, plan_shards, write_sharded_dir

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_BATCH = 65_536
TRAIN_POINTS_PER_LIST = 64           # within faiss's 39..256 per centroid
MIN_POINTS_PER_LIST = 39
PQ_TRAIN_POINTS = 256 * 64           # PQ codebooks: 256 centroids x enough points each
TUNE_QUERIES = 400                   # split in two: one half tunes, the other proves
TUNING_HEADROOM = 0.01               # ~2 standard errors of recall@10 on 200 queries: held-out must hold too
NPROBE_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
RERANK_STEPS = (1, 2, 4, 8, 16, 32, 64)
ADD_QUANTIZER_EF = 256              # HNSW coarse quantizer effort when assigning vectors to lists
REFERENCE_SAMPLE = 20_000            # rows whose leave-one-out top-k mean forms the percentile reference
PLATEAU = 0.002                      # recall gained by the next step below which a search axis stops


# --- where vectors come from -------------------------------------------------------------

class VectorSource:
    """Rows of float32 vectors, read in batches and by position, never all at once."""
    n: int
    d: int

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted positions, read in one pass."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.d), dtype=np.float32)
        lo = 0
        for start, batch in self.batches(DEFAULT_BATCH):
            hi = np.searchsorted(rows, start + len(batch))
            out[lo:hi] = batch[rows[lo:hi] - start]
            lo = hi
            if lo == len(rows):
                break
        return out


class ArraySource(VectorSource):
    def __init__(self, array: np.ndarray):
        if array.ndim != 2:
            raise ValueError(f"expected a 2-d array of vectors, got shape {array.shape}")
        self.array, (self.n, self.d) = array, array.shape

    def batches(self, batch_size: int):
        for start in range(0, self.n, batch_size):
            yield start, as_float32(self.array[start:start + batch_size])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return as_float32(self.array[np.asarray(rows, dtype=np.int64)])


class NpyFileSource(VectorSource):
    """A float32 ``.npy`` file read batch by batch with plain reads: unlike a memory map, the
    pages read do not stay in the process's resident set."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise ValueError(f"{self.path} must hold a C-ordered float32 2-d array, found {dtype} {shape}")
        self.n, self.d = shape

    def batches(self, batch_size: int):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, self.n, batch_size):
                batch = np.empty((min(batch_size, self.n - start), self.d), dtype=np.float32)
                f.readinto(memoryview(batch).cast("B"))
                yield start, batch


class ParquetSource(VectorSource):
    """An embeddings parquet: one fixed-size-list (or list) float column."""

    def __init__(self, path: str | os.PathLike, column: str = "embedding"):
        self.path, self.column = Path(path), column
        self.file = pq.ParquetFile(self.path)
        if column not in self.file.schema_arrow.names:
            raise ValueError(f"{self.path} has no {column!r} column (columns: {self.file.schema_arrow.names})")
        self.n = self.file.metadata.num_rows
        field_type = self.file.schema_arrow.field(column).type
        self.d = getattr(field_type, "list_size", None) or len(next(self.batches(1))[1][0])

    def batches(self, batch_size: int):
        start = 0
        for record_batch in self.file.iter_batches(batch_size=batch_size, columns=[self.column]):
            values = record_batch.column(0).flatten().to_numpy(zero_copy_only=False)
            batch = as_float32(values.reshape(len(record_batch), -1))
            yield start, batch
            start += len(batch)


def open_source(vectors, column: str = "embedding") -> VectorSource:
    """An array, a ``.npy`` path (memory-mapped) or a parquet path as a ``VectorSource``."""
    if isinstance(vectors, VectorSource):
        return vectors
    if isinstance(vectors, np.ndarray):
        return ArraySource(vectors)
    path = Path(vectors)
    if path.suffix == ".npy":
        return NpyFileSource(path)
    if path.suffix == ".parquet":
        return ParquetSource(path, column)
    raise ValueError(f"cannot read vectors from {path}: give an array, a .npy or a .parquet file")


# --- training and adding -----------------------------------------------------------------

def train_points(factory: str, n: int) -> int:
    """How many vectors train ``factory``: 0 when it needs none."""
    nlist = nlist_of(factory)
    if nlist:
        want = max(nlist * TRAIN_POINTS_PER_LIST, PQ_TRAIN_POINTS if is_lossy(factory) else 0)
        if n < nlist * MIN_POINTS_PER_LIST:
            raise ValueError(f"{factory} needs at least {nlist * MIN_POINTS_PER_LIST:,} vectors to train "
                             f"({MIN_POINTS_PER_LIST} per list); the collection has {n:,}: use fewer lists")
        return min(n, want)
    if is_lossy(factory) or factory.startswith(("OPQ", "PCA")):
        return min(n, PQ_TRAIN_POINTS)
    return 0


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else np.arange(n)


def train_empty(factory: str, metric: str, source: VectorSource, seed: int = 0) -> tuple[faiss.Index, int]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    try:
        index = faiss.index_factory(source.d, factory, METRICS[metric])
    except RuntimeError as exc:
        raise ValueError(f"{factory!r} is not a faiss factory string for {source.d}-d vectors "
                         f"({str(exc).splitlines()[-1][:200]}); leave factory unset to let choose_index pick") from None
    _skip_polysemous_training(index)
    size = train_points(factory, source.n)
    if size and not index.is_trained:
        log.info("training %s on a seeded sample of %s vectors", factory, f"{size:,}")
        index.train(source.take(sample_rows(source.n, size, seed)))
    if f"IVF{nlist_of(factory)}_HNSW" in factory:
        # Each vector goes to the list the HNSW coarse quantizer finds for it; at faiss's default
        # efSearch (16) that is sometimes a far-off list no query for the vector would probe
        # (measured on a 1M x 512 index: 1 of 200 sampled vectors had been put in the list ranked 86th for it).
        faiss.ParameterSpace().set_index_parameter(index, "quantizer_efSearch", ADD_QUANTIZER_EF)
    return index, size


def _skip_polysemous_training(index: faiss.Index) -> None:
    """The factory turns on polysemous training for PQ; we never search with it and it costs
    seconds to minutes (15 s for IVF128,PQ16 on 16k x 64, measured) for nothing."""
    try:
        inner = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        inner = index.index if isinstance(index, faiss.IndexPreTransform) else index
        inner = faiss.downcast_index(inner)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


class StoredVectorsWriter:
    """Writes the float32 rows of ``vectors.npy`` in order, with plain writes (no memory map)."""

    def __init__(self, path: Path, n: int, d: int):
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(self.file, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})

    def __setitem__(self, rows: slice, batch: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(batch, dtype="<f4").tobytes())  # rows arrive in order

    def close(self) -> None:
        self.file.close()


def add_batches(parts: list[faiss.Index], shards: list[dict] | None, source: VectorSource, batch_size: int,
                stored: StoredVectorsWriter | None = None) -> None:
    """One pass over ``source``: each row goes to its shard under its global position."""
    for start, batch in source.batches(batch_size):
        stop = start + len(batch)
        if shards is None:
            parts[0].add(batch)
        else:
            for part, shard in zip(parts, shards):
                lo, hi = max(start, shard["offset"]), min(stop, shard["offset"] + shard["count"])
                if lo < hi:
                    part.add_with_ids(batch[lo - start:hi - start], np.arange(lo, hi, dtype=np.int64))
        if stored is not None:
            stored[start:stop] = batch
        if source.n > batch_size:
            log.info("added %s / %s vectors", f"{stop:,}", f"{source.n:,}")


# --- tuning ------------------------------------------------------------------------------

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


WEIGHTINGS = ("views_per_hour",)  # metadata columns a percentile may be weighted by (log1p of the value)


def row_weights(metadata, weighting: str) -> np.ndarray:
    """Per-row weights for a weighted percentile: log1p of a metadata column (missing or negative -> 0).

    Build and query side both call this, so the reference and an upload are weighted alike.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weight {weighting!r}: use one of {', '.join(WEIGHTINGS)} or none")
    if metadata is None or weighting not in metadata:
        raise ValueError(f"weighting by {weighting!r} needs a {weighting!r} metadata column")
    values = np.asarray(pd.to_numeric(metadata[weighting], errors="coerce"), dtype=np.float64)
    return np.log1p(np.clip(np.nan_to_num(values, nan=0.0), 0.0, None))


def weighted_mean(sims: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean of neighbour similarities, weighted when ``weights`` is given (all-zero weights: plain mean)."""
    if weights is None or not np.any(weights > 0):
        return float(np.mean(sims))
    return float(np.dot(sims, weights) / np.sum(weights))


def reference_scores(searcher: Searcher, source: VectorSource, k: int = 10, sample: int = REFERENCE_SAMPLE,
                     seed: int = 0, batch: int = 4096,
                     weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each sampled row's leave-one-out mean similarity to its top-k neighbours, sorted.

    The similarity-percentile scorer (query side) ranks an upload's top-k mean against this
    distribution with one binary search; a seeded sample of 20,000 rows pins a percentile to
    well under one point. With per-row ``weights`` the same neighbours also give a weighted
    mean (each neighbour's similarity weighted by its own weight), returned second.
    """
    rows = sample_rows(source.n, min(sample, source.n), seed + 3)
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


def _range_margin(searcher: Searcher, queries: np.ndarray, k: int) -> float:
    """The largest gap seen between approximate and exact scores, with headroom (range search)."""
    raw_scores, labels = searcher._raw_search(queries, k * 4)
    exact = searcher.rerank(queries, labels)
    valid = labels >= 0
    gap = np.abs(raw_scores[valid] - exact[valid])
    return float(gap.max()) if gap.size else 0.0


# --- the one build entry point ------------------------------------------------------------

def temp_file(target: Path, role: str) -> Path:
    """Where a file bound for ``target`` is prepared (beside it, so the final move is a rename)."""
    return target.parent / f".{target.name}.{os.getpid()}.{role}.npy"


def build_index_dir(target: str | os.PathLike, vectors, ids, *, factory: str | None = None,
                    metric: str = "inner_product", memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                    target_recall: float = DEFAULT_TARGET_RECALL, k: int = 10, batch_size: int = DEFAULT_BATCH,
                    shard_size: int | None = None, seed: int = 0, tune_queries: np.ndarray | None = None,
                    reference_k: int | None = None, reference_weights: np.ndarray | None = None,
                    reference_weighting: str | None = None, extra_files: dict[str, os.PathLike] | None = None,
                    metadata=None, embedding: dict | None = None, source_partitions: list[str] | None = None,
                    extra: dict | None = None) -> dict:
    """Build, tune and atomically write an index directory (sharded with ``shard_size``).

    ``factory`` None lets ``choose_index`` pick for the size and ``memory_budget_bytes``
    (the budget is per shard when sharded). ``reference_k`` also stores the sorted leave-one-out
    top-k mean similarities (``reference_scores.npy``) for similarity percentiles; with
    ``reference_weights`` (one per row, named by ``reference_weighting``) also the weighted variant.
    ``extra_files`` (name -> prepared file) are moved in and covered by the manifest. Returns the manifest.
    """
    source = open_source(vectors)
    ids = [str(i) for i in ids]
    if len(ids) != source.n:
        raise ValueError(f"{source.n:,} vectors but {len(ids):,} ids: every vector needs exactly one id")
    if metadata is not None and len(metadata) != source.n:
        raise ValueError(f"{len(metadata):,} metadata rows for {source.n:,} vectors: they must be in the same order")
    size_for_choice = min(source.n, shard_size) if shard_size else source.n
    factory = factory or (choose_index(size_for_choice, source.d, memory_budget_bytes, metric)
                          if size_for_choice else "Flat")
    seconds = {}
    start = time.perf_counter()
    empty, trained_on = train_empty(factory, metric, source, seed)
    seconds["train"] = time.perf_counter() - start
    shards = plan_shards(source.n, shard_size) if shard_size else None
    parts = [labelled_part(empty) for _ in shards] if shards is not None else [empty]

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stored_path, stored = None, None
    if is_lossy(factory):
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".vectors.npy", dir=target.parent)
        os.close(fd)
        stored_path = Path(name)
        stored = StoredVectorsWriter(stored_path, source.n, source.d)
    try:
        start = time.perf_counter()
        add_batches(parts, shards, source, batch_size, stored)
        seconds["add"] = time.perf_counter() - start
        rerank_vectors = None
        if stored is not None:
            stored.close()
            rerank_vectors = np.load(stored_path, mmap_mode="r", allow_pickle=False)
        tuning = {}
        if not is_exact(factory) and source.n:
            start = time.perf_counter()
            tuning = tune(Searcher(parts, metric, {}, rerank_vectors), factory, source, k=k,
                          target_recall=target_recall, queries=tune_queries, seed=seed)
            seconds["tune"] = time.perf_counter() - start
        reference = None
        if reference_k and metric == "inner_product" and source.n > 1:
            start = time.perf_counter()
            weights = None if reference_weights is None else np.asarray(reference_weights, dtype=np.float64)
            if weights is not None and (weights.shape != (source.n,) or not np.all(np.isfinite(weights))
                                        or np.any(weights < 0)):
                raise ValueError(f"reference_weights must be {source.n:,} finite, non-negative numbers (one per "
                                 f"vector), got shape {weights.shape}")
            plain, weighted = reference_scores(Searcher(parts, metric, tuning.get("search_params", {}),
                                                        rerank_vectors), source, k=reference_k, seed=seed,
                                               weights=weights)
            np.save(temp_file(target, "reference"), plain, allow_pickle=False)
            reference = {"file": REFERENCE_FILE, "k": reference_k, "sampled_rows": min(source.n, REFERENCE_SAMPLE)}
            if weighted is not None:
                np.save(temp_file(target, "weighted"), weighted, allow_pickle=False)
                reference["weighted"] = {"file": WEIGHTED_REFERENCE_FILE, "weight": reference_weighting or "weight"}
            seconds["reference"] = time.perf_counter() - start
        del rerank_vectors
        manifest_extra = {
            "memory_budget_bytes": memory_budget_bytes,
            "train_points": trained_on,
            "build_seconds": round(sum(seconds.values()), 6),
            "build_seconds_by_stage": {s: round(v, 6) for s, v in seconds.items()},
            "search_params": tuning.get("search_params", {}),
            "tuning": {key: v for key, v in tuning.items() if key not in ("search_params", "range_margin")},
            "range_margin": tuning.get("range_margin", 0.0),
            "stored_vectors": VECTORS_FILE if stored_path else None,
            "reference_scores": reference,
            **(extra or {}),
        }
        files = {**({VECTORS_FILE: stored_path} if stored_path else {}),
                 **({REFERENCE_FILE: temp_file(target, "reference")} if reference else {}),
                 **({WEIGHTED_REFERENCE_FILE: temp_file(target, "weighted")}
                    if reference and "weighted" in reference else {}),
                 **(extra_files or {})} or None
        if shards is not None:
            return write_sharded_dir(target, parts, shards, ids, factory=factory, metric=metric, metadata=metadata,
                                     extra={"embedding": embedding or {},
                                            "source_partitions": sorted(source_partitions or []), **manifest_extra},
                                     extra_files=files)
        return write_index_dir(target, parts[0], ids, factory=factory, metric=metric, metadata=metadata,
                               embedding=embedding, source_partitions=source_partitions, extra=manifest_extra,
                               extra_files=files)
    finally:
        if stored_path is not None:
            stored_path.unlink(missing_ok=True)
        for role in ("reference", "weighted"):
            temp_file(target, role).unlink(missing_ok=True)
