"""Versions: every build is a new immutable directory; a ``current`` pointer names the live one.

    <root>/versions/<version>/   index files + manifest, never modified once written
    <root>/current               the live version's name, replaced atomically (os.replace)

A reader resolves the pointer once and loads that directory, so a swap under it never serves
index files of one version with the ids of another. ``add`` appends to a copy of the live
index (a trained IVF index keeps its centroids: no retraining) and publishes the copy as a new
version; vectors from another model or of another dimension are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.files import write_bytes_atomic
from thumblab_dagster.lib.engine.ids import concat_ids, id_array, is_positions
from thumblab_dagster.lib.engine.index_dir import (
    METADATA_FILE,
    VECTORS_FILE,
    IndexIntegrityError,
    as_float32,
    write_index_dir,
)
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.shards import load_any, shard_name, write_sharded_dir
from thumblab_dagster.lib.engine.spec import IndexSpec, resolve_spec

VERSIONS_DIR = "versions"
POINTER = "current"
# Manifest fields the writers set themselves, or that describe files a child does not carry
# (references describe the parent's rows); everything else is carried from parent to child.
NOT_CARRIED = {"format_version", "factory", "metric", "dim", "ntotal", "files", "ids", "id_column", "embedding",
               "source_partitions", "built_at", "faiss_version", "layout", "shards", "shard_size", "version",
               "parent_version", "added_rows", "reference_scores", "side_indexes"}
# A published copy's own fields: an index directory appended from one is a new, unpublished directory.
PUBLISHED_FIELDS = {"snapshot", "published_from", "published_at", "published_names"}


def embedding_identity(info: dict | None, keys: Sequence[str] | None = None) -> str:
    """What makes two embeddings comparable, as one string.

    The embedder's own ``identity`` entry when it wrote one (e.g. a model and its loaded
    weights); otherwise the ``keys`` the caller names, or the whole description.
    """
    info = dict(info or {})
    if info.get("identity"):
        return str(info["identity"])
    chosen = {key: info.get(key) for key in keys} if keys else info
    return json.dumps(chosen, sort_keys=True, default=str)


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

    def build(self, vectors, ids, spec: IndexSpec | None = None, **overrides) -> Manifest:
        """Build a new version with ``build_index_dir`` (same ``spec`` and overrides) and make it current."""
        name = self._new_name()
        spec = resolve_spec(spec, **overrides)
        spec = resolve_spec(spec, extra={**spec.extra, "version": name})
        manifest = build_index_dir(self.path(name), vectors, ids, spec)
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
        metadata: pd.DataFrame | None = None, identity_keys: Sequence[str] | None = None) -> Manifest:
    """Append vectors to a copy of the current version and make the copy current (``append_rows``)."""
    live = store.load()
    name = store._new_name()
    written = append_rows(live, store.path(name), vectors, ids, embedding=embedding, metadata=metadata,
                          identity_keys=identity_keys, extra={"version": name, "parent_version": live.directory.name})
    store._swap(name)
    return written


def append_rows(live, target: str | os.PathLike, vectors: np.ndarray, ids, *, embedding: dict | None,
                metadata: pd.DataFrame | None = None, identity_keys: Sequence[str] | None = None,
                extra: dict | None = None, shard_size: int | None = None,
                extra_files: dict[str, os.PathLike] | None = None) -> Manifest:
    """Write ``target``: the loaded index ``live`` with ``vectors`` appended, without retraining.

    ``ids``: strings, or None/``"positions"`` when the index keeps position ids (the new rows
    take the next positions). Refuses vectors of another dimension or from another embedding
    (``embedding_identity``, with ``identity_keys``), ids the index already holds, and (when
    the index keeps metadata) rows without metadata. The child carries the parent's fields
    except its percentile reference and side indexes, which describe the parent's rows only;
    ``extra`` sets more (e.g. ``version``, ``parent_version``), ``extra_files`` (name -> path,
    moved in) more files. A sharded index takes the new rows in one new shard, or with
    ``shard_size`` fills its open last shard up to that size first and opens new ones of it
    (``appended_shards``); shards it leaves as they were are linked, not written again.
    """
    vectors = as_float32(vectors)
    parent, manifest = live.directory.name, live.manifest
    if vectors.shape[1] != manifest.dim:
        raise VersionMismatchError(f"refusing to add {len(vectors)} vectors of dimension {vectors.shape[1]} to "
                                   f"version {parent}, which holds {manifest.dim}-d vectors: build a new index instead")
    new, old = embedding_identity(embedding, identity_keys), embedding_identity(manifest.embedding, identity_keys)
    if new != old:
        raise VersionMismatchError(f"refusing to add vectors from {new} to version {parent}, built from {old}: "
                                   "similarities across models are meaningless; build a new index instead")
    new_ids = _new_ids(ids, len(vectors), live)
    old_metadata = live.directory / manifest.file_name(METADATA_FILE)
    if old_metadata.exists() and metadata is None:
        raise VersionMismatchError(f"version {parent} keeps metadata for every row: pass metadata for the new rows")

    all_ids = concat_ids(live.ids if not manifest.positions else None, new_ids)
    merged_metadata = (pd.concat([pd.read_parquet(old_metadata), metadata], ignore_index=True)
                       if old_metadata.exists() else None)
    carried = {key: value for key, value in manifest.to_json().items()
               if key not in NOT_CARRIED and key not in PUBLISHED_FIELDS}
    extra = {**carried, **{key: None for key in manifest.side_indexes or []},
             "parent_version": parent, "added_rows": len(vectors), **(extra or {})}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stored_file = _appended_vectors(live, vectors, target.parent) if manifest.stored_vectors else None
    files = {**(extra_files or {}), **({VECTORS_FILE: stored_file} if stored_file else {})}
    common = {"factory": manifest.factory, "metric": manifest.metric, "metadata": merged_metadata, "extra": extra,
              "extra_files": files or None, "id_column": manifest.id_column,
              "embedding": manifest.embedding, "source_partitions": manifest.source_partitions}
    try:
        if manifest.is_sharded:
            parts, shards = appended_shards(live, vectors, shard_size)
            kept = {s["file"]: live.directory / manifest.file_name(s["file"])
                    for s, part in zip(shards, parts) if any(part is old for old in live.shards)}
            return write_sharded_dir(target, parts, shards, all_ids, kept=kept, **common)
        index = faiss.clone_index(live.index)
        index.add(vectors)
        return write_index_dir(target, index, all_ids, **common)
    finally:
        if stored_file is not None:
            Path(stored_file).unlink(missing_ok=True)


def appended_shards(live, vectors: np.ndarray, shard_size: int | None = None) -> tuple[list, list[dict]]:
    """The loaded sharded index's parts and shard list with ``vectors`` after its rows, under the next
    global positions. Without ``shard_size`` they form one new shard; with it the open last shard
    (fewer than ``shard_size`` rows) is filled first, in a clone (its trained quantizer kept), and
    the rest go to new shards of ``shard_size``: copies of a trained shard emptied, never retrained.
    Parts left as they were are ``live``'s own objects."""
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    parts, shards = list(live.shards), [dict(s) for s in live.offsets]
    offset, start = live.ntotal, 0
    if shard_size and shards and shards[-1]["count"] < shard_size and len(vectors):
        start = min(shard_size - shards[-1]["count"], len(vectors))
        parts[-1] = faiss.clone_index(parts[-1])
        parts[-1].add_with_ids(vectors[:start], np.arange(offset, offset + start, dtype=np.int64))
        shards[-1]["count"] += start
    step = shard_size or max(len(vectors), 1)
    for lo in range(start, len(vectors), step):
        hi = min(lo + step, len(vectors))
        part = faiss.clone_index(live.shards[0])
        part.reset()  # trained and empty: same centroids, same labels scheme
        part.add_with_ids(vectors[lo:hi], np.arange(offset + lo, offset + hi, dtype=np.int64))
        parts.append(part)
        shards.append({"file": shard_name(len(shards)), "offset": offset + lo, "count": hi - lo})
    return parts, shards


def _new_ids(ids, n: int, live):
    """The appended rows' ids, checked against the index's kind of ids and the ids it holds."""
    if live.manifest.positions or is_positions(ids):
        if not (live.manifest.positions and is_positions(ids)):
            raise VersionMismatchError(f"version {live.directory.name} keeps "
                                       f"{'position' if live.manifest.positions else 'string'} ids; the new rows "
                                       f"come with {'positions' if is_positions(ids) else 'string ids'}")
        return None
    new_ids = id_array(ids)
    if len(new_ids) != n:
        raise VersionMismatchError(f"{n} vectors but {len(new_ids)} ids")
    held = np.intersect1d(id_array(live.ids), new_ids)
    if len(held) or len(np.unique(new_ids)) != len(new_ids):
        raise VersionMismatchError(f"refusing to add ids the index already holds or repeats, e.g. {held[:5].tolist()}")
    return new_ids


def _appended_vectors(live, vectors: np.ndarray, where: Path) -> Path:
    """The parent's stored vectors followed by the new ones, streamed into a temp file."""
    old = np.load(live.directory / live.manifest.file_name(VECTORS_FILE), mmap_mode="r", allow_pickle=False)
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
