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
from pathlib import Path

import faiss
import numpy as np

from thumblab_dagster.lib.engine.choice import choose_index
from thumblab_dagster.lib.engine.index_dir import (
    METRICS,
    REFERENCE_FILE,
    VECTORS_FILE,
    WEIGHTED_REFERENCE_FILE,
    write_index_dir,
)
from thumblab_dagster.lib.engine.percentiles import REFERENCE_SAMPLE, reference_scores
from thumblab_dagster.lib.engine.search import Searcher, is_exact, is_lossy, nlist_of
from thumblab_dagster.lib.engine.shards import labelled_part, plan_shards, write_sharded_dir
from thumblab_dagster.lib.engine.sources import DEFAULT_BATCH, VectorSource, open_source, sample_rows
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, tune

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
TRAIN_POINTS_PER_LIST = 64           # within faiss's 39..256 per centroid
MIN_POINTS_PER_LIST = 39
PQ_TRAIN_POINTS = 256 * 64           # PQ codebooks: 256 centroids x enough points each
ADD_QUANTIZER_EF = 256              # HNSW coarse quantizer effort when assigning vectors to lists


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
