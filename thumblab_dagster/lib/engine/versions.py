"""Versions: every build is a new immutable directory; a ``current`` pointer names the live one.

    <root>/versions/<version>/   index files + manifest, never modified once written
    <root>/current               the live version's name, replaced atomically (os.replace)

A reader resolves the pointer once and loads that directory, so a swap under it never serves
index files of one version with the ids of another. ``add`` appends to a copy of the live
index (a trained IVF index keeps its centroids: no retraining) and publishes the copy as a new
version; vectors from another model or of another dimension are refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.embed.clip import weights_identity
from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.files import write_bytes_atomic
from thumblab_dagster.lib.engine.index_dir import (
    METADATA_FILE,
    VECTORS_FILE,
    IndexIntegrityError,
    as_float32,
    write_index_dir,
)
from thumblab_dagster.lib.engine.shards import SHARDED, load_any, write_sharded_dir

VERSIONS_DIR = "versions"
POINTER = "current"
# Manifest keys the writers set themselves; everything else is carried from parent to child.
WRITER_KEYS = {"format_version", "factory", "metric", "dim", "ntotal", "files", "embedding", "source_partitions",
               "built_at", "faiss_version", "layout", "shards", "shard_size", "version", "parent_version",
               "added_rows"}


class VersionMismatchError(ValueError):
    """New vectors do not belong in this index (another model or dimension, or ids it holds)."""


class VersionedIndex:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.versions_dir = self.root / VERSIONS_DIR
        self.pointer = self.root / POINTER

    def _new_name(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        return f"v{stamp}-{uuid.uuid4().hex[:6]}"  # sorts by time; unique under concurrent builders

    def path(self, name: str) -> Path:
        return self.versions_dir / name

    def current(self) -> str | None:
        try:
            return self.pointer.read_text().strip() or None
        except FileNotFoundError:
            return None

    def versions(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _swap(self, name: str) -> None:
        if not (self.path(name) / "manifest.json").exists():
            raise IndexIntegrityError(f"version {name} is not complete under {self.versions_dir}; pointer left as is")
        write_bytes_atomic(self.pointer, (name + "\n").encode())

    def build(self, vectors, ids, **build_kwargs) -> dict:
        """Build a new version with ``engine.build_index_dir`` and make it current."""
        name = self._new_name()
        extra = {**build_kwargs.pop("extra", {}), "version": name}
        manifest = build_index_dir(self.path(name), vectors, ids, extra=extra, **build_kwargs)
        self._swap(name)
        return manifest

    def load(self, verify: bool = True, attempts: int = 3):
        """The current version, verified. Retries when a prune removed it between read and load."""
        for _ in range(attempts):
            name = self.current()
            if name is None:
                raise FileNotFoundError(f"no version is current under {self.root}: build one first")
            try:
                return load_any(self.path(name), verify=verify)
            except (FileNotFoundError, IndexIntegrityError):
                if self.current() == name:  # not a race: the live version itself is broken
                    raise
        raise IndexIntegrityError(f"the current version under {self.root} kept changing while loading")

    def prune(self, keep: int = 3) -> list[str]:
        """Delete all but the ``keep`` newest versions; the current one is always kept."""
        current, names = self.current(), self.versions()
        doomed = [n for n in names[:max(0, len(names) - keep)] if n != current]
        for name in doomed:
            shutil.rmtree(self.path(name), ignore_errors=True)
        return doomed


def add(store: VersionedIndex, vectors: np.ndarray, ids, *, embedding: dict | None,
        metadata: pd.DataFrame | None = None) -> dict:
    """Append vectors to a copy of the current version and make the copy current.

    Refuses vectors of another dimension or from another model, ids the index already holds,
    and (when the index keeps metadata) rows without metadata.
    """
    vectors, ids = as_float32(vectors), [str(i) for i in ids]
    live = store.load()
    parent, manifest = live.directory.name, live.manifest
    if vectors.shape[1] != manifest["dim"]:
        raise VersionMismatchError(f"refusing to add {len(ids)} vectors of dimension {vectors.shape[1]} to version "
                                   f"{parent}, which holds {manifest['dim']}-d vectors: build a new index instead")
    if weights_identity(embedding) != weights_identity(manifest.get("embedding")):
        raise VersionMismatchError(f"refusing to add vectors from {weights_identity(embedding)} to version {parent}, "
                                   f"built from {weights_identity(manifest.get('embedding'))}: similarities across "
                                   "models are meaningless; build a new index instead")
    if len(ids) != len(vectors):
        raise VersionMismatchError(f"{len(vectors)} vectors but {len(ids)} ids")
    held = set(map(str, live.ids)) & set(ids)
    if held or len(set(ids)) != len(ids):
        raise VersionMismatchError(f"refusing to add ids the index already holds or repeats, e.g. {sorted(held)[:5]}")
    old_metadata = live.directory / METADATA_FILE
    if old_metadata.exists() and metadata is None:
        raise VersionMismatchError(f"version {parent} keeps metadata for every row: pass metadata for the new rows")

    name = store._new_name()
    all_ids = [str(i) for i in live.ids] + ids
    merged_metadata = (pd.concat([pd.read_parquet(old_metadata), metadata], ignore_index=True)
                       if old_metadata.exists() else None)
    extra = {**{k: v for k, v in manifest.items() if k not in WRITER_KEYS},
             "version": name, "parent_version": parent, "added_rows": len(ids)}
    target = store.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    stored_file = _appended_vectors(live, vectors, target.parent) if manifest.get("stored_vectors") else None
    files = {VECTORS_FILE: stored_file} if stored_file else None
    try:
        if manifest.get("layout") == SHARDED:
            offset = live.ntotal
            part = faiss.clone_index(live.shards[0])
            part.reset()  # trained and empty: same centroids, same labels scheme
            part.add_with_ids(vectors, np.arange(offset, offset + len(ids), dtype=np.int64))
            shards = live.offsets + [{"file": f"shard_{len(live.offsets):05d}.index", "offset": offset,
                                      "count": len(ids)}]
            written = write_sharded_dir(target, live.shards + [part], shards, all_ids, factory=manifest["factory"],
                                        metric=manifest["metric"], metadata=merged_metadata,
                                        extra={**extra, "embedding": manifest.get("embedding", {}),
                                               "source_partitions": manifest.get("source_partitions", [])},
                                        extra_files=files)
        else:
            index = faiss.clone_index(live.index)
            index.add(vectors)
            written = write_index_dir(target, index, all_ids, factory=manifest["factory"], metric=manifest["metric"],
                                      metadata=merged_metadata, embedding=manifest.get("embedding"),
                                      source_partitions=manifest.get("source_partitions"), extra=extra,
                                      extra_files=files)
    finally:
        if stored_file is not None:
            Path(stored_file).unlink(missing_ok=True)
    store._swap(name)
    return written


def _appended_vectors(live, vectors: np.ndarray, where: Path) -> Path:
    """The parent's stored vectors followed by the new ones, streamed into a temp file."""
    old = np.load(live.directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
    fd, name = tempfile.mkstemp(prefix=".add.", suffix=".vectors.npy", dir=where)
    os.close(fd)
    out = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(len(old) + len(vectors), old.shape[1]))
    for start in range(0, len(old), 65_536):
        stop = min(start + 65_536, len(old))
        out[start:stop] = old[start:stop]
    out[len(old):] = vectors
    out.flush()
    del out
    return Path(name)
