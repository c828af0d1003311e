"""Sharded indices: ``shard_00000.index``, ... plus ``id_map.json``, covered by the manifest.

Every shard stores its vectors under their *global* positions as faiss labels, so a search
fans out over the shards and merges the top-k exactly as one index would, and a shard whose
offset drifted (faiss's ``merge_from`` without ``add_id`` pitfall) is caught by the validator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.files import atomic_dir, write_json_atomic
from thumblab_dagster.lib.vector_index import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_FILE,
    METRICS,
    IndexIntegrityError,
    _describe_files,
    as_float32,
    checksum_problems,
    read_manifest,
)

ID_MAP_FILE = "id_map.json"
SHARDED = "sharded"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.index"


def _labelled_shard(vectors: np.ndarray, offset: int, factory: str, metric: str) -> faiss.Index:
    base = faiss.index_factory(vectors.shape[1], factory, METRICS[metric])
    if not base.is_trained:
        base.train(vectors)
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(vectors, np.arange(offset, offset + len(vectors), dtype=np.int64))
    return index


def write_sharded(target: str | os.PathLike, vectors: np.ndarray, ids, *, shard_size: int,
                  factory: str = "Flat", metric: str = "inner_product", metadata: pd.DataFrame | None = None,
                  extra: dict | None = None) -> dict:
    """Split ``vectors`` into shards of at most ``shard_size`` rows and write them atomically."""
    vectors = as_float32(vectors)
    ids = [str(i) for i in ids]
    if len(ids) != len(vectors):
        raise IndexIntegrityError(f"refusing to write: {len(vectors)} vectors but {len(ids)} ids")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    shards = [{"file": shard_name(i), "offset": start, "count": min(shard_size, len(ids) - start)}
              for i, start in enumerate(range(0, len(ids), shard_size))]
    with atomic_dir(target) as tmp:
        for shard in shards:
            rows = vectors[shard["offset"]:shard["offset"] + shard["count"]]
            faiss.write_index(_labelled_shard(rows, shard["offset"], factory, metric), str(tmp / shard["file"]))
        write_json_atomic(tmp / ID_MAP_FILE, {"ids": ids, "shards": shards})
        names = [s["file"] for s in shards] + [ID_MAP_FILE]
        if metadata is not None:
            metadata.reset_index(drop=True).to_parquet(tmp / METADATA_FILE, index=False)
            names.append(METADATA_FILE)
        manifest = {"format_version": FORMAT_VERSION, "layout": SHARDED, "factory": factory, "metric": metric,
                    "dim": int(vectors.shape[1]), "ntotal": len(ids), "shard_size": shard_size, "shards": shards,
                    "files": _describe_files(tmp, names), "faiss_version": faiss.__version__, **(extra or {})}
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


@dataclass
class ShardedIndex:
    shards: list[faiss.Index]
    ids: np.ndarray
    offsets: list[dict]
    manifest: dict
    directory: Path

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    def shard_of(self, position: int) -> int:
        for i, s in enumerate(self.offsets):
            if s["offset"] <= position < s["offset"] + s["count"]:
                return i
        raise IndexError(f"position {position} is in no shard")

    def reconstruct(self, position: int) -> np.ndarray:
        return self.shards[self.shard_of(position)].reconstruct(int(position))

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Fan out, then merge: the same top-k (global positions) as one exact index."""
        queries = as_float32(queries)
        k = min(k, max(self.ntotal, 1))
        parts = [s.search(queries, min(k, s.ntotal)) for s in self.shards if s.ntotal]
        sims = np.concatenate([p[0] for p in parts], axis=1)
        labels = np.concatenate([p[1] for p in parts], axis=1)
        descending = self.manifest.get("metric") == "inner_product"
        order = np.argsort(-sims if descending else sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, 1), np.take_along_axis(labels, order, 1)


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
