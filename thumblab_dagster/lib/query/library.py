"""The query side: published indices, one per name, loaded once per version, searched and scored.

``ReferenceLibrary(root, spec)`` serves every name under ``root``, which may hold published copies
(read through ``.versions/<name>/current``, resolved once per load so a publish is never seen half
done; else the flat ``<name>_manifest.json`` + ``<name>.index`` ...), versioned roots
(``<name>/current``) or plain index directories (``<name>/manifest.json``, single or sharded). Each
call looks at the name's manifest (one ``stat``); a new version is verified against its checksums
and swapped in whole, so a reader is never handed a half-loaded index. A version that fails
verification is refused and logged while the previous one keeps serving. The ``LibrarySpec`` says
which names exist and what answers show; nothing here knows a collection, and nothing imports Dagster.

``library.pinned(name)`` takes the name's snapshot once and answers every query of one request from
it (or, when there is none, every query through the fallback chain), so one answer names one version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.engine.index_dir import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexIntegrityError,
    file_path,
    parse_manifest,
    published_names,
    read_manifest,
)
from thumblab_dagster.lib.engine.publish import VERSIONS_DIR, resolve_current
from thumblab_dagster.lib.engine.versions import VersionedIndex
from thumblab_dagster.lib.query.fallback import RemoteSearch, answer, remote_reference_count
from thumblab_dagster.lib.query.results import (
    IndexUnavailable,
    ScoreResult,
    SimilarResult,
    TransientLoadError,
    UnknownName,
)
from thumblab_dagster.lib.query.snapshot import (
    Location,
    Snapshot,
    load_snapshot,
    published_location,
    reference_count,
    stat_key,
    version_of,
)
from thumblab_dagster.lib.query.spec import NAME_PATTERN, LibrarySpec

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 50.0
RETRY_TRANSIENT_S = 30.0  # a version that failed to load for a passing reason is tried again after this


@dataclass
class _Slot:
    """A name's cache slot: the serving version, and what was last seen on disk."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entry: Snapshot | None = None
    seen: tuple | None = None                      # (watched file's stat key, version)
    refused: dict[str, str] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)   # version -> monotonic time of the next try


def _servable(directory: Path, name: str) -> bool:
    """A version this library can answer from: the published layout (``<name>_manifest.json``) or an
    index directory (``manifest.json`` beside ``index.faiss``). Other sets published under the same
    root (another collection's own layout) are not its names."""
    return (directory / published_names(name)["manifest"]).exists() or \
        ((directory / MANIFEST_FILE).exists() and (directory / INDEX_FILE).exists())


class ReferenceLibrary:
    """Thread-safe access to every name's latest verified index under ``root``.

    ``spec`` is the collection's: the names it accepts (plus any found under ``root``), its id
    key, metadata columns, weightings and noun. ``remote`` is an optional ``RemoteSearch`` used
    when the local index cannot answer. ``on_search(operation, seconds)``, when set, hears how long
    each local search took (a service's metrics; nothing here knows an exporter).
    """

    def __init__(self, root: str | os.PathLike, spec: LibrarySpec, *, remote: RemoteSearch | None = None,
                 on_search: Callable[[str, float], None] | None = None):
        self.root = Path(root)
        self.spec = spec
        self.remote = remote
        self.on_search = on_search
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "loads": 0, "refused": 0}
        self._last_load_ms: float | None = None

    # -- discovery

    def names(self) -> list[str]:
        """The spec's names, then any other index found under ``root``."""
        found = set()
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.endswith("_manifest.json"):
                    found.add(path.name[:-len("_manifest.json")])
                elif path.is_dir() and (_servable(path / "current", path.name) or _servable(path, path.name)):
                    found.add(path.name)
            if (self.root / VERSIONS_DIR).is_dir():
                found |= {path.name for path in (self.root / VERSIONS_DIR).iterdir()
                          if _servable(path / "current", path.name)}
        return list(self.spec.names) + sorted(found - set(self.spec.names))

    def _location(self, name: str) -> Location | None:
        with_current = self._published(name)
        if with_current.watch.exists():
            return with_current
        published = self.root / published_names(name)["manifest"]
        if published.exists():
            return Location("published", published, self.root)
        if (self.root / name / "current").exists():
            return Location("versioned", self.root / name / "current", self.root / name)
        if (self.root / name / "manifest.json").exists():
            return Location("directory", self.root / name / "manifest.json", self.root / name)
        return None

    def _unknown(self, name) -> UnknownName:
        return UnknownName(self.spec.unknown(name, self.names()))

    # -- the cache

    def _slot(self, name: str) -> _Slot:
        with self._lock:
            return self._slots.setdefault(name, _Slot())

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counts[counter] += n

    def entry(self, name: str) -> Snapshot:
        """The name's serving version, loading a new one first if the manifest changed."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise self._unknown(name)
        # One stat per query in the common (published) case; no directory listing.
        location = self._published(name)
        try:
            key = stat_key(location.watch)
        except (FileNotFoundError, NotADirectoryError):
            location = self._location(name)
            if location is None:
                if name not in self.spec.names:
                    raise self._unknown(name) from None
                log.info("no index for %s under %s", name, self.root)
                raise IndexUnavailable(self.spec.missing(name)) from None
            try:
                key = stat_key(location.watch)
            except FileNotFoundError:
                key = None
        slot = self._slot(name)
        entry = slot.entry
        seen = slot.seen
        if entry is not None and seen is not None and seen[0] == key:
            self._count("hits")
            return entry
        with slot.lock:  # one loader per name; readers of the old entry carry on meanwhile
            if slot.entry is not None and slot.seen is not None and slot.seen[0] == key:
                self._count("hits")
                return slot.entry
            self._count("misses")
            return self._refresh(name, slot, location, key)

    def _refresh(self, name: str, slot: _Slot, location: Location, key) -> Snapshot:
        try:
            manifest_path, directory = self._manifest_path(location)
            raw = manifest_path.read_bytes()
            manifest = parse_manifest(raw, manifest_path)
            version = version_of(raw, manifest)
        except (OSError, IndexIntegrityError) as exc:
            return self._keep_serving(name, slot, f"cannot read the {name} manifest: {exc}")
        if slot.entry is not None and slot.entry.version == version:
            slot.seen = (key, version)
            return slot.entry
        if version in slot.refused:
            slot.seen = (key, version)
            return self._keep_serving(name, slot, slot.refused[version], log_it=False)
        if time.monotonic() < slot.retry_at.get(version, 0.0):
            return self._keep_serving(name, slot, f"version {version} of {name} failed to load a moment ago",
                                      log_it=False)
        try:
            entry = load_snapshot(name, location, version, manifest, directory, self.spec)
        except (IndexIntegrityError, ValueError, KeyError) as exc:  # the files themselves are wrong (first:
            # IndexIntegrityError is a RuntimeError)
            log.error("version %s of %s at %s refused: %s", version, name, directory, exc)
            reason = f"version {version} of {name} refused: {str(exc).replace(str(directory), '<index dir>')}"
            slot.refused[version], slot.seen = reason, (key, version)
            self._count("refused")
            return self._keep_serving(name, slot, reason)
        except (TransientLoadError, OSError, MemoryError, RuntimeError) as exc:
            # may pass (a publish mid-way, file handles, memory; faiss raises RuntimeError for I/O):
            # try again later, not on every query (verifying a large index is not free)
            slot.retry_at[version] = time.monotonic() + RETRY_TRANSIENT_S
            why = str(exc).replace(str(directory), "<index dir>")
            return self._keep_serving(name, slot, f"version {version} of {name} could not be loaded "
                                                  f"({type(exc).__name__}: {why}); retrying in {RETRY_TRANSIENT_S:.0f} s")
        old = slot.entry
        slot.entry, slot.seen = entry, (key, version)
        self._count("loads")
        self._last_load_ms = entry.load_ms
        log.info("loaded %s version %s (%d vectors, %.1f ms)%s", name, version, entry.ntotal, entry.load_ms,
                 f", replacing {old.version}" if old else "")
        return entry

    def _published(self, name: str) -> Location:
        """A published copy's current version (``published_location``: cached paths)."""
        return published_location(self.root, name)

    def _manifest_path(self, location: Location) -> tuple[Path, Path]:
        if location.kind == "current":
            directory = resolve_current(location.root)
            if directory is None:
                raise FileNotFoundError(f"{location.root} names no version")
            return directory / location.watch.name, directory
        if location.kind == "versioned":
            store = VersionedIndex(location.root)
            directory = store.path(store.current() or "")
            return directory / "manifest.json", directory
        return location.watch, location.root

    def _keep_serving(self, name: str, slot: _Slot, reason: str, log_it: bool = True) -> Snapshot:
        if slot.entry is None:
            if log_it:
                log.error("%s; nothing to serve for %s yet", reason, name)
            raise IndexUnavailable(reason)
        if log_it:
            log.error("%s; still serving version %s", reason, slot.entry.version)
        return slot.entry

    def serving(self, name: str) -> Snapshot | None:
        """The snapshot now serving ``name``, without looking for (or loading) a newer one; None when none is loaded."""
        slot = self._slots.get(name)
        return slot.entry if slot is not None else None

    def pinned(self, name: str) -> Pinned:
        """``name``'s serving snapshot, taken once: its queries all answer from that one version."""
        return Pinned.take(self, name)

    def clear_cache(self) -> None:
        with self._lock:
            self._slots.clear()

    def cache_stats(self) -> dict:
        """Loaded names (under ``cached_<plural>``), their versions, refusals and hit/miss counts."""
        with self._lock:
            slots = dict(self._slots)
            counts = dict(self._counts)
        return {
            f"cached_{self.spec.plural}": sorted(n for n, s in slots.items() if s.entry is not None),
            "versions": {n: s.entry.version for n, s in sorted(slots.items()) if s.entry is not None},
            "refused_versions": {n: sorted(s.refused) for n, s in sorted(slots.items()) if s.refused},
            **counts,
            "last_load_ms": None if self._last_load_ms is None else round(self._last_load_ms, 3),
        }

    # -- queries

    def _local(self, name: str, pinned: Pinned | None) -> Snapshot:
        entry = self.entry(name) if pinned is None else pinned.snapshot_for(name)
        if entry.ntotal == 0:
            raise IndexUnavailable(f"the {name} index ({entry.version}) is empty")
        return entry

    def similarity_percentile(self, vector, name: str, k: int = 10, weight: str | None = None, *,
                              pinned: Pinned | None = None) -> ScoreResult:
        """The query's percentile (0..100) among ``name``'s references; falls back to the remote, then to 50.0.

        The answer says how many references ranked it and whether that is at least the spec's
        ``min_references`` (``confident``); a default answer is never confident.

        Raises only for the caller's own mistakes: a vector of another dimension, a ``weight``
        the spec does not declare, or ``k`` the reference was not built with is a fallback reason.
        ``pinned`` (from ``pinned(name)``): answer from that snapshot, not the latest.
        """
        self.spec.check_weight(weight)

        def local() -> ScoreResult:
            entry = self._local(name, pinned)
            started = time.perf_counter()
            value, pct, references = entry.score(entry.check_vector(vector), k, weight)
            self._searched("similarity_percentile", started)
            return self._rated(ScoreResult(round(pct, 4), "local", f"local index {entry.version}", name, k, weight,
                                           round(value, 6), entry.version), references)

        def ask(remote: RemoteSearch, reason: str) -> ScoreResult:
            pct = float(remote.similarity_percentile(np.asarray(vector, np.float32), name, k, weight))
            if not 0.0 <= pct <= 100.0:
                raise ValueError(f"percentile {pct} outside 0..100")
            return self._rated(ScoreResult(round(pct, 4), "remote", reason, name, k, weight),
                               remote_reference_count(remote, name, k))

        return answer(name, local, remote=self.remote, ask=ask, verb="scored",
                      default=lambda reason: ScoreResult(DEFAULT_PERCENTILE, "default", reason, name, k, weight),
                      note=f"default {DEFAULT_PERCENTILE} returned")

    def similar(self, vector, name: str, k: int = 10, *, pinned: Pinned | None = None) -> SimilarResult:
        """Up to ``k`` most similar references: the id (under the spec's key), similarity, the spec's columns."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")

        def local() -> SimilarResult:
            entry = self._local(name, pinned)
            started = time.perf_counter()
            found = entry.similar(entry.check_vector(vector), k)
            self._searched("similar", started)
            return SimilarResult(found, source="local",
                                 reason=f"local index {entry.version}", version=entry.version)

        def ask(remote: RemoteSearch, reason: str) -> SimilarResult:
            return SimilarResult(remote.similar(np.asarray(vector, np.float32), name, k), source="remote",
                                 reason=reason)

        return answer(name, local, remote=self.remote, ask=ask, verb="searched",
                      default=lambda reason: SimilarResult([], source="default", reason=reason),
                      note="no similar references")

    def side_percentile(self, vector, name: str, k: int = 10, *, pinned: Pinned | None = None) -> ScoreResult:
        """The query's percentile among the spec's side-index vectors (local only); 50.0 when unavailable."""

        def local() -> ScoreResult:
            entry = self._local(name, pinned)
            started = time.perf_counter()
            value, pct, references = entry.side_score(entry.check_vector(vector), k)
            self._searched("side_percentile", started)
            label = self.spec.side.label if self.spec.side else "side-index"
            return self._rated(ScoreResult(round(pct, 4), "local", f"local {label} vectors {entry.version}", name, k,
                                           None, round(value, 6), entry.version), references)

        return answer(name, local, default=lambda reason: ScoreResult(DEFAULT_PERCENTILE, "default", reason, name, k),
                      note=f"default {DEFAULT_PERCENTILE} returned")

    def _searched(self, operation: str, started: float) -> None:
        if self.on_search is not None:
            self.on_search(operation, time.perf_counter() - started)

    def _rated(self, result: ScoreResult, references: int | None) -> ScoreResult:
        """``result`` with how many references ranked it; below the spec's minimum it is not confident and
        its reason says so. (Defaults never come here: they stay ``confident=False``, no count.)"""
        result.reference_count = references
        thin = self.spec.not_confident(references)
        result.confident = thin is None
        if thin is not None:
            result.reason = f"{result.reason}; {thin}"
        return result

    # -- what a person asks of an index

    def index_info(self) -> dict[str, dict]:
        """Per name, from its manifest (nothing is loaded): size, references, type, model, version."""
        return {name: self._info(name) for name in self.names()}

    def _info(self, name: str) -> dict:
        location = self._location(name)
        info = {"exists": False, "num_vectors": 0, "reference_count": 0, "dimension": None, "file_size_mb": None,
                "last_modified": None, "index_type": None, "embedding_model": None, "version": None, "snapshot": None}
        if location is None:
            return info
        try:
            manifest_path, directory = self._manifest_path(location)
            manifest = read_manifest(manifest_path)
        except (OSError, IndexIntegrityError) as exc:
            return {**info, "error": str(exc)}
        index_path = file_path(directory, manifest, INDEX_FILE) if location.kind in ("published", "current") or \
            INDEX_FILE in manifest.get("files", {}) else manifest_path
        stat = index_path.stat() if index_path.exists() else None
        embedding = manifest.get("embedding") or {}
        slot = self._slots.get(name)
        return {**info, "exists": True, "num_vectors": int(manifest.get("ntotal", 0)),
                "reference_count": reference_count(manifest), "dimension": manifest.get("dim"),
                "file_size_mb": round(sum(f["bytes"] for f in manifest.get("files", {}).values()) / 2**20, 3),
                "last_modified": (datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
                                  if stat else None),
                "index_type": manifest.get("factory"), "embedding_model": embedding.get("model"),
                "weights": self.spec.model.describe(embedding) if embedding else None,
                "version": manifest.get("version") or version_of(manifest_path.read_bytes(), manifest),
                "snapshot": manifest.get("snapshot"),
                "serving_version": slot.entry.version if slot and slot.entry else None}


@dataclass(frozen=True, eq=False)
class Pinned:
    """One name's snapshot, taken once, and the library's queries answered from it.

    ``snapshot`` is None when the local index could not answer when it was taken; ``unavailable``
    says why, and every query then goes down the fallback chain with that reason, as it would have.
    """

    library: ReferenceLibrary
    name: str
    snapshot: Snapshot | None
    unavailable: IndexUnavailable | None = None

    @classmethod
    def take(cls, library: ReferenceLibrary, name: str) -> Pinned:
        try:
            return cls(library, name, library.entry(name))
        except IndexUnavailable as exc:
            return cls(library, name, None, exc)

    @property
    def version(self) -> str | None:
        return self.snapshot.version if self.snapshot is not None else None

    def snapshot_for(self, name: str) -> Snapshot:
        """The pinned snapshot, or the reason there is none raised afresh (same type: the chain treats an
        unknown name as it did)."""
        if name != self.name:
            raise ValueError(f"this view is pinned to {self.name}, not {name}")
        if self.snapshot is None:
            raise type(self.unavailable)(str(self.unavailable))
        return self.snapshot

    def similarity_percentile(self, vector, k: int = 10, weight: str | None = None) -> ScoreResult:
        return self.library.similarity_percentile(vector, self.name, k, weight, pinned=self)

    def similar(self, vector, k: int = 10) -> SimilarResult:
        return self.library.similar(vector, self.name, k, pinned=self)

    def side_percentile(self, vector, k: int = 10) -> ScoreResult:
        return self.library.side_percentile(vector, self.name, k, pinned=self)
