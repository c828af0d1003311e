"""Sharded indices: ``shard_00000.index``, ... plus ``id_map.json``, covered by the manifest.

Every shard stores its vectors under their *global* positions as faiss labels, so a search
fans out over the shards and merges the top-k exactly as one index would, and a shard whose
offset drifted (faiss's ``merge_from`` without ``add_id`` pitfall) is caught by the validator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.files import atomic_dir, write_json_atomic
from thumblab_dagster.lib.engine.index_dir import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    IndexIntegrityError,
    _describe_files,
    as_float32,
    checksum_problems,
    load_index_dir,
    read_manifest,
    searcher_for,
    write_sidecars,
)
from thumblab_dagster.lib.engine.search import RangeHits, Searcher

ID_MAP_FILE = "id_map.json"
SHARDED = "sharded"


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


def write_sharded_dir(target: str | os.PathLike, parts: list[faiss.Index], shards: list[dict], ids: list[str], *,
                      factory: str, metric: str, metadata: pd.DataFrame | None = None, extra: dict | None = None,
                      extra_files: dict[str, os.PathLike] | None = None) -> dict:
    """Write filled shard indices, the id map and the manifest as one atomic directory swap."""
    ids = [str(i) for i in ids]
    if sum(p.ntotal for p in parts) != len(ids) or len(parts) != len(shards):
        raise IndexIntegrityError(f"refusing to write: {sum(p.ntotal for p in parts)} vectors in {len(parts)} "
                                  f"shards but {len(ids)} ids and {len(shards)} planned shards")
    with atomic_dir(target) as tmp:
        for shard, part in zip(shards, parts):
            faiss.write_index(part, str(tmp / shard["file"]))
        write_json_atomic(tmp / ID_MAP_FILE, {"ids": ids, "shards": shards})
        names = [s["file"] for s in shards] + [ID_MAP_FILE] + write_sidecars(tmp, metadata, extra_files)
        manifest = {"format_version": FORMAT_VERSION, "layout": SHARDED, "factory": factory, "metric": metric,
                    "dim": int(parts[0].d) if parts else 0, "ntotal": len(ids),
                    "shard_size": max((s["count"] for s in shards), default=0), "shards": shards,
                    "files": _describe_files(tmp, names), "faiss_version": faiss.__version__,
                    "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


@dataclass
class ShardedIndex:
    shards: list[faiss.Index]
    ids: np.ndarray
    offsets: list[dict]
    manifest: dict
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
        problems = checksum_problems(directory, manifest)
        if problems:
            raise IndexIntegrityError(f"sharded index at {directory} fails its manifest: {'; '.join(problems)}")
    id_map = json.loads((directory / ID_MAP_FILE).read_text())
    shards = [faiss.read_index(str(directory / s["file"])) for s in id_map["shards"]]
    return ShardedIndex(shards, np.asarray(id_map["ids"], dtype=str), id_map["shards"], manifest, directory)


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


def load_any(directory: str | os.PathLike, manifest: dict | None = None, verify: bool = True):
    """A single or sharded index directory, whichever the manifest says it is.

    ``verify=False`` is for validators, which report problems instead of raising.
    """
    manifest = manifest or read_manifest(directory)
    if manifest.get("layout") == SHARDED:
        return load_sharded(directory, verify=verify)
    return load_index_dir(directory, verify=verify)
