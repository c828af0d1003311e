"""What ``build_index_dir`` builds: one small spec object instead of a score of keywords.

    spec = IndexSpec(memory_budget_bytes=2**30, target_recall=0.95,
                     reference=ReferenceSpec(k=10, weights=w, weighting="plays"),
                     metadata=frame, id_column="item_id", embedding={"identity": "encoder-v1"})
    build_index_dir(target, vectors, ids, spec)

Keyword overrides name ``IndexSpec`` fields (``build_index_dir(target, vectors, ids,
factory="Flat")``); ``resolve_spec`` applies them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.percentiles import REFERENCE_SAMPLE
from thumblab_dagster.lib.engine.progress import Progress
from thumblab_dagster.lib.engine.sources import DEFAULT_BATCH
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL

DEFAULT_MEMORY_BUDGET = 2 * 1024**3


@dataclass(frozen=True, eq=False)
class ReferenceSpec:
    """The similarity-percentile reference: each sampled row's leave-one-out top-k mean, sorted."""

    k: int = 10
    weights: np.ndarray | None = None    # one finite, non-negative weight per row: also a weighted reference
    weighting: str | None = None         # the weights' name for the manifest (e.g. the metadata column)
    sample: int = REFERENCE_SAMPLE


@dataclass(frozen=True, eq=False)
class SideIndexSpec:
    """Vectors kept beside the index, searched exactly, with their own reference.

    Written as ``<prefix>_vectors.npy`` (+ ``<prefix>_reference_scores.npy``) and described by
    the manifest field ``key``; with no vectors (or fewer than two) that field is null.
    """

    key: str
    prefix: str
    vectors: np.ndarray | None
    reference_k: int | None = None
    describe: Mapping = field(default_factory=dict)   # more keys for the manifest entry


@dataclass(frozen=True, eq=False)
class IndexSpec:
    """How to build an index directory; every field has a working default."""

    factory: str | None = None           # None: choose_index picks for the size and the budget
    metric: str = "inner_product"
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET   # per shard when sharded
    target_recall: float = DEFAULT_TARGET_RECALL       # promised: lower 95% bound on held-out queries
    k: int = 10                          # recall@k the tuning promises
    batch_size: int = DEFAULT_BATCH
    shard_size: int | None = None
    seed: int = 0
    tune_queries: np.ndarray | None = None   # queries from outside the collection to tune with
    reference: ReferenceSpec | None = None
    side_indexes: Sequence[SideIndexSpec] = ()
    metadata: pd.DataFrame | None = None     # row-ordered, written as metadata.parquet
    id_column: str | None = None             # the metadata column holding each row's id
    embedding: Mapping = field(default_factory=dict)   # model/weights or feature schema; "identity" compares
    source_partitions: Sequence[str] = ()
    extra: Mapping = field(default_factory=dict)        # more manifest fields (a collection's own)
    extra_files: Mapping[str, os.PathLike] = field(default_factory=dict)  # prepared files, moved in
    progress: Progress | None = None     # called with (stage, message) besides the INFO log line
    # (trained empty index, VectorSource, shard plan) -> the filled shards, each labelled with its rows'
    # global positions as add_batches fills them (e.g. by parallel tasks); None: in this process
    fill_shards: Callable | None = None


FIELDS = {f.name for f in dataclasses.fields(IndexSpec)}
EMPTY_WHEN_NONE = {"embedding": {}, "extra": {}, "extra_files": {}, "source_partitions": (), "side_indexes": ()}


def resolve_spec(spec: IndexSpec | None = None, **overrides) -> IndexSpec:
    """``spec`` (default ``IndexSpec()``) with keyword overrides of its fields."""
    spec = spec if spec is not None else IndexSpec()
    unknown = sorted(set(overrides) - FIELDS)
    if unknown:
        raise TypeError(f"unknown build setting(s) {', '.join(unknown)}: IndexSpec takes {', '.join(sorted(FIELDS))}")
    overrides.update({key: EMPTY_WHEN_NONE[key] for key, value in overrides.items()
                      if value is None and key in EMPTY_WHEN_NONE})
    return dataclasses.replace(spec, **overrides) if overrides else spec
