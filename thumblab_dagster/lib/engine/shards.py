"""Sharded indices: ``shard_00000.index``, ... plus ``id_map.json``, covered by the manifest.

Every shard stores its vectors under their *global* positions as faiss labels, so a search
fans out over the shards and merges the top-k exactly as one index would, and a shard whose
offset drifted (faiss's ``merge_from`` without ``add_id`` pitfall) is caught by the validator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.files import atomic_dir, link_or_copy, write_json_atomic
from thumblab_dagster.lib.engine.ids import PositionIds, prepare_ids, read_ids, write_ids
from thumblab_dagster.lib.engine.index_dir import (
    IndexIntegrityError,
    as_float32,
    finish_manifest,
    load_index_dir,
    read_manifest,
    searcher_for,
    verified,
    write_sidecars,
)
from thumblab_dagster.lib.engine.manifest import ID_MAP_FILE, SHARDED, Manifest
from thumblab_dagster.lib.engine.search import RangeHits, Searcher

__all__ = ["ID_MAP_FILE", "SHARDED"]

log = logging.getLogger(__name__)


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.index"


def plan_shards(n: int, shard_size: int) -> list[dict]:
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return [{"file": shard_name(i), "offset": start, "count": min(shard_size, n - start)}
            for i, start in enumerate(range(0, n, shard_size))]


def labelled_part(empty: faiss.Index) -> faiss.Index:
    """A copy of a trained, empty index whose labels will be global positions."""
    return faiss.IndexIDMap2(faiss.clone_index(empty))


def write_sharded_dir(target: str | os.PathLike, parts: list[faiss.Index], shards: list[dict], ids, *,
                      factory: str, metric: str, metadata: pd.DataFrame | None = None, extra: dict | None = None,
                      extra_files: dict[str, os.PathLike] | None = None, id_column: str | None = None,
                      embedding: dict | None = None, source_partitions: list[str] | None = None,
                      kept: Mapping[str, os.PathLike] | None = None) -> Manifest:
    """Write filled shard indices, the id map and the manifest as one atomic directory swap.

    ``id_map.json`` lists the shards (file, offset, count); string ids go to ``ids.npy`` as for
    a single index (none for position ids). ``kept``: shard file -> an unchanged copy of it in an
    immutable index directory, linked (copied across filesystems) instead of written again from
    its part: an append rewrites only the shards it changed.
    """
    total = int(sum(p.ntotal for p in parts))
    try:
        ids = prepare_ids(ids, total)
    except ValueError as exc:
        raise IndexIntegrityError(f"refusing to write: {exc}") from None
    if len(parts) != len(shards) or sum(s["count"] for s in shards) != total:
        raise IndexIntegrityError(f"refusing to write: {total} vectors in {len(parts)} shards but "
                                  f"{len(shards)} planned shards covering {sum(s['count'] for s in shards)}")
    with atomic_dir(target) as tmp:
        for shard, part in zip(shards, parts):
            if shard["file"] in (kept or {}):
                link_or_copy(kept[shard["file"]], tmp / shard["file"])
            else:
                faiss.write_index(part, str(tmp / shard["file"]))
        write_json_atomic(tmp / ID_MAP_FILE, {"shards": shards})
        ids_entry, id_files = write_ids(tmp, ids)
        names = [s["file"] for s in shards] + [ID_MAP_FILE, *id_files, *write_sidecars(tmp, metadata, extra_files,
                                                                                       id_column)]
        manifest = finish_manifest(tmp, names, {
            "layout": SHARDED, "factory": factory, "metric": metric, "dim": int(parts[0].d) if parts else 0,
            "ntotal": total, "shard_size": max((s["count"] for s in shards), default=0), "shards": shards,
            "ids": ids_entry, "id_column": id_column, "embedding": embedding or {},
            "source_partitions": sorted(source_partitions or []), **(extra or {})})
    log.info("wrote %s over %s vectors in %d shards to %s", factory, f"{total:,}", len(shards), target)
    return manifest


@dataclass
class ShardedIndex:
    shards: list[faiss.Index]
    ids: np.ndarray | PositionIds      # len(), ids[pos], ids[positions], tolist()
    offsets: list[dict]
    manifest: Manifest
    directory: Path
    searcher: Searcher | None = None

    def __post_init__(self):
        if self.searcher is None:
            self.searcher = searcher_for(self.shards, self.manifest, self.directory)

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    def reconstruct(self, position: int) -> np.ndarray:
        return self.searcher.reconstruct(position)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Fan out, then merge: the same top-k (global positions) as one index would give."""
        return self.searcher.search(as_float32(queries), k)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[RangeHits]:
        return self.searcher.range_search(as_float32(queries), threshold)


def load_sharded(directory: str | os.PathLike, verify: bool = True) -> ShardedIndex:
    directory = Path(directory)
    manifest = read_manifest(directory)
    if verify:
        verified(directory, manifest, "sharded index")
    # A published copy may rename the files (``published_names``); the id map keeps the directory's names.
    id_map = json.loads((directory / manifest.file_name(ID_MAP_FILE)).read_text())
    shards = [faiss.read_index(str(directory / manifest.file_name(s["file"]))) for s in id_map["shards"]]
    return ShardedIndex(shards, read_ids(directory, manifest), id_map["shards"], manifest, directory)


def shard_label_problems(index: ShardedIndex) -> list[str]:
    """(a)/(c) for shards: contiguous offsets, counts that agree, labels at the right offsets."""
    problems, expected_offset = [], 0
    for meta, shard in zip(index.offsets, index.shards):
        if meta["offset"] != expected_offset:
            problems.append(f"{meta['file']}: offset {meta['offset']}, expected {expected_offset}")
        if shard.ntotal != meta["count"]:
            problems.append(f"{meta['file']}: {shard.ntotal} vectors, id map says {meta['count']}")
        labels = faiss.vector_to_array(shard.id_map) if hasattr(shard, "id_map") else np.arange(shard.ntotal)
        want = np.arange(meta["offset"], meta["offset"] + shard.ntotal)
        if labels.shape != want.shape or not np.array_equal(labels, want):
            first = int(np.argmax(labels != want)) if labels.shape == want.shape else 0
            problems.append(f"{meta['file']}: local row {first} carries global position "
                            f"{labels[first] if len(labels) else None}, expected {meta['offset'] + first}")
        expected_offset = meta["offset"] + meta["count"]
    if expected_offset != len(index.ids):
        problems.append(f"counts differ: shards cover {expected_offset} positions, id map has {len(index.ids)} ids")
    return problems


def load_any(directory: str | os.PathLike, manifest: Manifest | None = None, verify: bool = True):
    """A single or sharded index directory, whichever the manifest says it is.

    ``verify=False`` is for validators, which report problems instead of raising.
    """
    manifest = manifest or read_manifest(directory)
    if manifest.is_sharded:
        return load_sharded(directory, verify=verify)
    return load_index_dir(directory, verify=verify)
