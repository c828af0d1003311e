"""The index engine: choose, train on a sample, add in batches, tune to a promised recall, write.

``build_index_dir(target, vectors, ids, spec)`` is the one build path: the index itself, its
percentile reference and any side indexes (vectors kept beside it with their own reference)
go through the same train/add/search functions. Vectors come from a ``VectorSource`` (an
array, a ``.npy`` read in batches or an embeddings parquet), so peak memory stays near index
size + training sample + two batches. Compressed (PQ) indices also get ``vectors.npy``, the
float32 vectors in row order, written batch by batch and memory-mapped by readers for the
exact re-rank stage. Every stage reports its progress (``progress.report``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path

import faiss
import numpy as np

from thumblab_dagster.lib.engine.choice import choose_index
from thumblab_dagster.lib.engine.ids import POSITIONS, prepare_ids
from thumblab_dagster.lib.engine.index_dir import (
    METRICS,
    REFERENCE_FILE,
    VECTORS_FILE,
    WEIGHTED_REFERENCE_FILE,
    as_float32,
    write_index_dir,
)
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.percentiles import reference_scores
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.search import Searcher, is_exact, is_lossy, nlist_of
from thumblab_dagster.lib.engine.shards import labelled_part, plan_shards, write_sharded_dir
from thumblab_dagster.lib.engine.sources import VectorSource, open_source, sample_rows
from thumblab_dagster.lib.engine.spec import (
    DEFAULT_MEMORY_BUDGET,
    IndexSpec,
    ReferenceSpec,
    SideIndexSpec,
    resolve_spec,
)
from thumblab_dagster.lib.engine.tune import tune

__all__ = ["DEFAULT_MEMORY_BUDGET", "POSITIONS", "IndexSpec", "ReferenceSpec", "SideIndexSpec", "build_index_dir"]

log = logging.getLogger(__name__)

TRAIN_POINTS_PER_LIST = 64           # within faiss's 39..256 per centroid
MIN_POINTS_PER_LIST = 39
PQ_TRAIN_POINTS = 256 * 64           # PQ codebooks: 256 centroids x enough points each
ADD_QUANTIZER_EF = 256              # HNSW coarse quantizer effort when assigning vectors to lists
ADD_REPORTS = 20                     # "added i / n vectors" lines per build, at most


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



def train_empty(factory: str, metric: str, source: VectorSource, seed: int = 0,
                progress: Progress | None = None) -> tuple[faiss.Index, int]:
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
        report(log, progress, "train", f"training {factory} on {size:,} vectors (a seeded sample of {source.n:,})")
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
                stored: StoredVectorsWriter | None = None, progress: Progress | None = None) -> None:
    """One pass over ``source``: each row goes to its shard under its global position."""
    batch_size = max(1, min(batch_size, -(-source.n // ADD_REPORTS)))   # a progress line at least every 5%
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
        if stop == source.n or stop * ADD_REPORTS // source.n > start * ADD_REPORTS // source.n:
            report(log, progress, "add", f"added {stop:,} / {source.n:,} vectors ({100 * stop // source.n}%)")


# --- the one build entry point ------------------------------------------------------------

class Staging:
    """Files prepared beside ``target`` (moving them in is a rename), by their final names;
    whatever is left when the build ends (it failed) is removed."""

    def __init__(self, target: Path):
        self.target = target
        self.prefix = f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.files: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        self.files[name] = self.target.parent / f"{self.prefix}.{name}"
        return self.files[name]

    def save(self, name: str, array: np.ndarray) -> str:
        with open(self.path(name), "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        return name

    def cleanup(self) -> None:
        for path in self.files.values():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def timed(seconds: dict, stage: str):
    start = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - start, 6)


def build_index_dir(target: str | os.PathLike, vectors, ids, spec: IndexSpec | None = None, **overrides) -> Manifest:
    """Build, tune and atomically write an index directory (sharded with ``spec.shard_size``).

    ``ids``: one id per vector (strings, kept in ``ids.npy``), or ``None``/``POSITIONS`` for
    implicit position ids (row i is id i, no file). ``spec`` says how (``IndexSpec``; None: the
    defaults); keyword ``overrides`` are ``IndexSpec`` field names (see ``resolve_spec``).
    ``spec.factory`` None lets ``choose_index`` pick for the size and the memory budget. Returns
    the manifest written.
    """
    spec = resolve_spec(spec, **overrides)
    source = open_source(vectors)
    ids = prepare_ids(ids, source.n)
    _check_inputs(spec, source)
    factory = spec.factory or _chosen(spec, source)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, seconds = Staging(target), {}
    try:
        with timed(seconds, "train"):
            empty, trained_on = train_empty(factory, spec.metric, source, spec.seed, spec.progress)
        shards = plan_shards(source.n, spec.shard_size) if spec.shard_size else None
        stored = StoredVectorsWriter(staging.path(VECTORS_FILE), source.n, source.d) if is_lossy(factory) else None
        with timed(seconds, "add"):
            if shards is not None and spec.fill_shards is not None:
                parts = list(spec.fill_shards(empty, source, shards))
                if stored is not None:  # the re-rank vectors, in order
                    for start, batch in source.batches(spec.batch_size):
                        stored[start:start + len(batch)] = batch
                report(log, spec.progress, "add", f"filled {len(parts)} shards with {source.n:,} vectors")
            else:
                parts = [labelled_part(empty) for _ in shards] if shards is not None else [empty]
                add_batches(parts, shards, source, spec.batch_size, stored, spec.progress)
        rerank = None
        if stored is not None:
            stored.close()
            rerank = np.load(staging.files[VECTORS_FILE], mmap_mode="r", allow_pickle=False)
        tuning = {}
        if not is_exact(factory) and source.n:
            with timed(seconds, "tune"):
                tuning = tune(Searcher(parts, spec.metric, {}, rerank), factory, source, k=spec.k,
                              target_recall=spec.target_recall, queries=spec.tune_queries, seed=spec.seed,
                              progress=spec.progress)
        searcher = Searcher(parts, spec.metric, tuning.get("search_params", {}), rerank)
        reference = None
        if spec.reference is not None and spec.metric == "inner_product" and source.n > 1:
            with timed(seconds, "reference"):
                reference = _reference(searcher, source, spec.reference, staging, "", spec)
        sides = {}
        if spec.side_indexes:
            with timed(seconds, "side_indexes"):
                sides = {side.key: _side_index(side, spec, staging) for side in spec.side_indexes}
        del rerank, searcher
        fields = {
            "memory_budget_bytes": spec.memory_budget_bytes,
            "train_points": trained_on,
            "build_seconds": round(sum(seconds.values()), 6),
            "build_seconds_by_stage": seconds,
            "search_params": tuning.get("search_params", {}),
            "tuning": {key: v for key, v in tuning.items() if key not in ("search_params", "range_margin")},
            "range_margin": tuning.get("range_margin", 0.0),
            "stored_vectors": VECTORS_FILE if stored is not None else None,
            "reference_scores": reference,
            "side_indexes": sorted(key for key, entry in sides.items() if entry) or None,
            **sides,
            **spec.extra,
        }
        report(log, spec.progress, "write", f"writing {factory} over {source.n:,} vectors to {target}")
        common = {"factory": factory, "metric": spec.metric, "metadata": spec.metadata, "extra": fields,
                  "extra_files": {**staging.files, **spec.extra_files}, "id_column": spec.id_column,
                  "embedding": dict(spec.embedding), "source_partitions": list(spec.source_partitions)}
        if shards is not None:
            return write_sharded_dir(target, parts, shards, ids, **common)
        return write_index_dir(target, parts[0], ids, **common)
    finally:
        staging.cleanup()


def _check_inputs(spec: IndexSpec, source: VectorSource) -> None:
    if spec.metadata is not None and len(spec.metadata) != source.n:
        raise ValueError(f"{len(spec.metadata):,} metadata rows for {source.n:,} vectors: they must be in the same order")
    if spec.id_column is not None and (spec.metadata is None or spec.id_column not in spec.metadata):
        raise ValueError(f"id_column {spec.id_column!r} names no column of the metadata: pass metadata with it, "
                         "or leave id_column unset")
    if spec.metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {spec.metric!r}")


def _chosen(spec: IndexSpec, source: VectorSource) -> str:
    size = min(source.n, spec.shard_size) if spec.shard_size else source.n
    factory = choose_index(size, source.d, spec.memory_budget_bytes, spec.metric) if size else "Flat"
    report(log, spec.progress, "choose", f"chose {factory} for {source.n:,} x {source.d} vectors within "
                                         f"{spec.memory_budget_bytes:,} bytes" + (" a shard" if spec.shard_size else ""))
    return factory


def _reference(searcher: Searcher, source: VectorSource, reference: ReferenceSpec, staging: Staging, prefix: str,
               spec: IndexSpec) -> dict:
    """The percentile reference (and its weighted variant) staged as ``<prefix>reference_scores*.npy``."""
    weights = None if reference.weights is None else np.asarray(reference.weights, dtype=np.float64)
    if weights is not None and (weights.shape != (source.n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0)):
        raise ValueError(f"reference weights must be {source.n:,} finite, non-negative numbers (one per "
                         f"vector), got shape {weights.shape}")
    plain, weighted = reference_scores(searcher, source, k=reference.k, sample=reference.sample, seed=spec.seed,
                                       weights=weights, progress=spec.progress)
    entry = {"file": staging.save(prefix + REFERENCE_FILE, plain), "k": reference.k,
             "sampled_rows": min(source.n, reference.sample)}
    if weighted is not None:
        entry["weighted"] = {"file": staging.save(prefix + WEIGHTED_REFERENCE_FILE, weighted),
                             "weight": reference.weighting or "weight"}
    return entry


def _side_index(side: SideIndexSpec, spec: IndexSpec, staging: Staging) -> dict | None:
    """Side vectors through the same path as the index: a Flat index trained and filled by the
    same functions, the same reference; staged as ``<prefix>_vectors.npy`` (+ reference)."""
    if side.vectors is None or len(side.vectors) < 2:
        return None
    vectors = as_float32(side.vectors)
    source = open_source(vectors)
    report(log, spec.progress, "side_indexes", f"side index {side.key}: {source.n:,} x {source.d} vectors")
    flat, _ = train_empty("Flat", spec.metric, source, spec.seed)
    add_batches([flat], None, source, spec.batch_size)
    entry = {"vectors": staging.save(f"{side.prefix}_vectors.npy", vectors), "rows": source.n, "dim": source.d,
             **side.describe}
    if side.reference_k and spec.metric == "inner_product":
        made = _reference(Searcher([flat], spec.metric), source, ReferenceSpec(k=side.reference_k), staging,
                          f"{side.prefix}_", spec)
        entry.update({"reference": made["file"], "k": side.reference_k})
    return entry
