"""The query side: published niche indices, loaded once per version, searched and scored.

``ReferenceLibrary(root)`` serves every niche under ``root``, which may hold published copies
(``<niche>_manifest.json`` + ``<niche>.index`` ...), versioned roots (``<niche>/current``) or
plain index directories (``<niche>/manifest.json``, single or sharded). Each call looks at the
niche's manifest (one ``stat``); a new version is verified against its checksums and swapped in
whole, so a reader is never handed a half-loaded index. A version that fails verification is
refused and logged while the previous one keeps serving. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES
from thumblab_dagster.lib.embed.clip import weights_identity
from thumblab_dagster.lib.engine.index_dir import (
    INDEX_FILE,
    METADATA_FILE,
    IndexIntegrityError,
    file_path,
    load_files,
    parse_manifest,
    published_names,
    read_manifest,
)
from thumblab_dagster.lib.engine.percentiles import WEIGHTINGS, row_weights, weighted_mean
from thumblab_dagster.lib.engine.shards import load_any
from thumblab_dagster.lib.engine.versions import VersionedIndex

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 50.0
NICHE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # niche names become file names: no paths
SIMILAR_COLUMNS = ("title", "thumbnail_url", "views_per_hour")
SELF_MATCH = 1.0 - 1e-5  # a neighbour this similar is the query itself (float32 rounding of 1.0)
RETRY_TRANSIENT_S = 30.0  # a version that failed to load for a passing reason is tried again after this


class EmbeddingMismatchError(ValueError):
    """A query vector from another model or of another dimension than the niche's index."""


class NicheUnavailable(Exception):
    """The local index cannot answer for a niche; ``str()`` says why (a fallback reason)."""


class TransientLoadError(NicheUnavailable):
    """A load that may succeed if tried again (files swapped mid-load, no memory, no file handles)."""


class RemoteSearch(Protocol):
    """A search the library falls back to when the local index cannot answer (e.g. Supabase)."""

    name: str

    def similarity_percentile(self, vector: np.ndarray, niche: str, k: int, weight: str | None) -> float: ...

    def similar(self, vector: np.ndarray, niche: str, k: int) -> list[dict]: ...


@dataclass
class ScoreResult:
    """A similarity percentile (0..100) and where it came from: ``local``, ``remote`` or ``default``."""

    percentile: float
    source: str
    reason: str
    niche: str
    k: int
    weight: str | None = None
    score: float | None = None       # the upload's top-k mean similarity (local scores)
    version: str | None = None       # the index version that answered (local scores)

    @property
    def is_default(self) -> bool:
        return self.source == "default"

    def __float__(self) -> float:
        return float(self.percentile)

    def as_dict(self) -> dict:
        return {**asdict(self), "is_default": self.is_default}


class SimilarResult(list):
    """The similar references (dicts), best first, plus where they came from."""

    def __init__(self, items: Iterable[dict] = (), *, source: str, reason: str, version: str | None = None):
        super().__init__(items)
        self.source, self.reason, self.version = source, reason, version


# --- one loaded version of one niche ------------------------------------------------------

@dataclass(frozen=True)
class Location:
    kind: str          # "published" | "versioned" | "directory"
    watch: Path        # the file whose change means "maybe a new version"
    root: Path


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(eq=False)
class NicheIndex:
    """One verified version of a niche's index with everything scoring needs. Never mutated."""

    niche: str
    version: str
    manifest: dict
    directory: Path
    index: object                     # LoadedIndex or ShardedIndex: .search(), .ids, .ntotal
    metadata: dict[str, np.ndarray]   # column -> row-ordered values (for similar())
    reference: np.ndarray | None
    weighted_reference: np.ndarray | None
    weights: dict[str, np.ndarray]
    titles: faiss.Index | None
    title_reference: np.ndarray | None
    load_ms: float
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def reference_k(self) -> int | None:
        return (self.manifest.get("reference_scores") or {}).get("k")

    def check_vector(self, vector) -> np.ndarray:
        """The query as one float32 row, refusing another dimension with a clear error."""
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            model = (self.manifest.get("embedding") or {}).get("model", "an unknown model")
            raise EmbeddingMismatchError(f"the {self.niche} index holds {self.dim}-d vectors from {model}; the "
                                         f"query has {vector.shape[1]} dimensions: embed it with the same model")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("the query vector is zero or contains NaN/inf: nothing to compare")
        return vector / np.float32(norm)  # cosine similarity: compare directions

    def check_model(self, weights: dict) -> None:
        """Refuse to score an upload embedded by another model or other weights than the index's."""
        built = self.manifest.get("embedding") or {}
        if built and weights_identity(weights) != weights_identity(built):
            raise EmbeddingMismatchError(
                f"the {self.niche} index was built with {_describe_weights(built)}, the query embedder is "
                f"{_describe_weights(weights)}: similarities across models are meaningless. Load the same "
                "model and weights (THUMBLAB_CLIP_MODEL / THUMBLAB_CLIP_PRETRAINED) or rebuild the index")

    def neighbours(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, positions = self.index.search(vector, k)
        keep = positions[0] >= 0
        return sims[0][keep], positions[0][keep]

    def scoring_neighbours(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k like the reference was built: leave-one-out, so a reference's own vector is
        not its own neighbour and scores exactly at its reference percentile."""
        sims, positions = self.neighbours(vector, k + 1)
        if len(sims) and sims[0] >= SELF_MATCH:
            return sims[1:k + 1], positions[1:k + 1]
        return sims[:k], positions[:k]

    def score(self, vector: np.ndarray, k: int, weight: str | None) -> tuple[float, float]:
        """(top-k mean similarity, percentile): one search plus one binary search."""
        if self.reference is None or not len(self.reference):
            raise NicheUnavailable(f"the {self.niche} index ({self.version}) has no percentile reference: "
                                   "rebuild it with reference_k")
        if k != self.reference_k:
            raise NicheUnavailable(f"the {self.niche} reference was built from top-{self.reference_k} neighbours, "
                                   f"not {k}: rebuild the index or ask with k={self.reference_k}")
        sims, positions = self.scoring_neighbours(vector, k)
        if not len(sims):
            raise NicheUnavailable(f"the {self.niche} index ({self.version}) returned no neighbours")
        if weight is None:
            value, reference = float(np.mean(sims)), self.reference
        else:
            if self.weighted_reference is None or weight not in self.weights:
                raise NicheUnavailable(f"the {self.niche} index ({self.version}) has no {weight}-weighted reference")
            value, reference = weighted_mean(sims, self.weights[weight][positions]), self.weighted_reference
        return value, percentile_of(value, reference)

    def similar(self, vector: np.ndarray, k: int) -> list[dict]:
        sims, positions = self.neighbours(vector, k)
        ids = self.index.ids
        out = []
        for sim, pos in zip(sims, positions):
            row = {"video_id": str(ids[pos]), "similarity": round(float(sim), 6)}
            for column in SIMILAR_COLUMNS:
                value = self.metadata[column][pos] if column in self.metadata else None
                row[column] = None if value is None or (isinstance(value, float) and np.isnan(value)) else \
                    (value.item() if isinstance(value, np.generic) else value)
            out.append(row)
        return out

    def title_score(self, vector: np.ndarray, k: int) -> tuple[float, float]:
        if self.titles is None or self.title_reference is None or not len(self.title_reference):
            raise NicheUnavailable(f"the {self.niche} index ({self.version}) was built without title vectors")
        sims, _ = self.titles.search(vector, min(k + 1, self.titles.ntotal))
        sims = sims[0][1:k + 1] if sims[0][0] >= SELF_MATCH and len(sims[0]) > 1 else sims[0][:k]
        value = float(np.mean(sims))
        return value, percentile_of(value, self.title_reference)


def _remote_why(exc: Exception) -> str:
    """A remote failure for a reason field (which HTTP clients see): what kind, not hosts or SQL."""
    return str(exc) if isinstance(exc, (LookupError, ValueError)) else f"{type(exc).__name__}; see the service log"


def percentile_of(value: float, reference: np.ndarray) -> float:
    """Share (0..100) of the sorted reference at or below ``value``."""
    return float(np.searchsorted(reference, value, side="right")) * 100.0 / len(reference)


def _describe_weights(info: dict) -> str:
    model, weights = weights_identity(info)
    return f"{model} ({'random-initialised weights' if weights == 'random-init' else weights})"


def _file_stats(directory: Path, manifest: dict) -> dict:
    """Identity of every file the manifest covers (by its on-disk name), to spot a swap mid-load."""
    out = {}
    for name in manifest.get("files", {}):
        path = directory / name
        out[name] = _stat_key(path) if path.exists() else None
    return out


def _load_version(niche: str, location: Location, version: str, manifest: dict, directory: Path) -> NicheIndex:
    start = time.perf_counter()
    before = _file_stats(directory, manifest)
    if location.kind == "published":  # verifies checksums before faiss.read_index
        names = published_names(niche)
        loaded = load_files(directory, names["index"], names["ids"], manifest)
    else:
        loaded = load_any(directory, manifest)
    metadata = {}
    metadata_path = file_path(directory, manifest, METADATA_FILE)
    frame = pd.read_parquet(metadata_path) if METADATA_FILE in _original_names(manifest) else None
    if frame is not None:
        if len(frame) != loaded.ntotal:
            raise IndexIntegrityError(f"{metadata_path} has {len(frame)} rows for {loaded.ntotal} vectors")
        metadata = {c: frame[c].to_numpy(dtype=object) for c in SIMILAR_COLUMNS if c in frame}

    def load_array(name: str | None) -> np.ndarray | None:
        return np.load(file_path(directory, manifest, name), allow_pickle=False) if name else None

    reference_entry = manifest.get("reference_scores") or {}
    weighted_entry = reference_entry.get("weighted") or {}
    weights = {}
    if weighted_entry and frame is not None and weighted_entry.get("weight") in WEIGHTINGS:
        weights[weighted_entry["weight"]] = row_weights(frame, weighted_entry["weight"])
    titles_entry = manifest.get("titles") or {}
    titles = None
    if titles_entry:
        title_vectors = load_array(titles_entry["vectors"])
        titles = faiss.IndexFlatIP(title_vectors.shape[1])
        titles.add(np.ascontiguousarray(title_vectors, dtype=np.float32))
    reference, weighted = load_array(reference_entry.get("file")), load_array(weighted_entry.get("file"))
    title_reference = load_array(titles_entry.get("reference"))
    # Every file is read by now: if one was swapped meanwhile, this version may be a mix. Retry later.
    if _file_stats(directory, manifest) != before:
        raise TransientLoadError(f"the {niche} files changed while version {version} was loading (a publish "
                                 "in progress); the next query tries again")
    return NicheIndex(
        niche=niche, version=version, manifest=manifest, directory=directory, index=loaded, metadata=metadata,
        reference=reference, weighted_reference=weighted, weights=weights, titles=titles,
        title_reference=title_reference, load_ms=(time.perf_counter() - start) * 1000.0)


def _original_names(manifest: dict) -> set:
    renamed = manifest.get("published_names")
    return set(renamed) if renamed else set(manifest.get("files", {}))


# --- the library --------------------------------------------------------------------------

@dataclass
class _Slot:
    """A niche's cache slot: the serving version, and what was last seen on disk."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entry: NicheIndex | None = None
    seen: tuple | None = None                      # (watched file's stat key, manifest sha)
    refused: dict[str, str] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)   # version -> monotonic time of the next try


class ReferenceLibrary:
    """Thread-safe access to every niche's latest verified index under ``root``.

    ``remote`` is an optional ``RemoteSearch`` used when the local index cannot answer.
    ``niches`` are the names the library accepts (default: the five Thumbnail Lab niches plus
    any found under ``root``).
    """

    def __init__(self, root: str | os.PathLike, *, remote: RemoteSearch | None = None,
                 niches: Iterable[str] | None = None):
        self.root = Path(root)
        self.remote = remote
        self._declared = tuple(niches) if niches is not None else NICHES
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "loads": 0, "refused": 0}
        self._last_load_ms: float | None = None

    # -- discovery

    def niches(self) -> list[str]:
        found = set()
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.endswith("_manifest.json"):
                    found.add(path.name[:-len("_manifest.json")])
                elif path.is_dir() and ((path / "current").exists() or (path / "manifest.json").exists()):
                    found.add(path.name)
        return list(self._declared) + sorted(found - set(self._declared))

    def _location(self, niche: str) -> Location | None:
        published = self.root / published_names(niche)["manifest"]
        if published.exists():
            return Location("published", published, self.root)
        if (self.root / niche / "current").exists():
            return Location("versioned", self.root / niche / "current", self.root / niche)
        if (self.root / niche / "manifest.json").exists():
            return Location("directory", self.root / niche / "manifest.json", self.root / niche)
        return None

    def _unknown(self, niche) -> NicheUnavailable:
        return NicheUnavailable(f"unknown niche {niche!r}: known niches are {', '.join(self.niches())}")

    # -- the cache

    def _slot(self, niche: str) -> _Slot:
        with self._lock:
            return self._slots.setdefault(niche, _Slot())

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def entry(self, niche: str) -> NicheIndex:
        """The niche's serving version, loading a new one first if the manifest changed."""
        if not isinstance(niche, str) or not NICHE_NAME.match(niche):
            raise self._unknown(niche)
        # One stat per query in the common (published) case; no directory listing.
        published = self.root / published_names(niche)["manifest"]
        try:
            key, location = _stat_key(published), Location("published", published, self.root)
        except FileNotFoundError:
            location = self._location(niche)
            if location is None:
                if niche not in self._declared:
                    raise self._unknown(niche) from None
                log.info("no index for %s under %s", niche, self.root)
                raise NicheUnavailable(f"no index for niche {niche!r} (run the pipeline, or check "
                                       "THUMBLAB_PUBLISH_DIR)") from None
            try:
                key = _stat_key(location.watch)
            except FileNotFoundError:
                key = None
        slot = self._slot(niche)
        entry = slot.entry
        seen = slot.seen
        if entry is not None and seen is not None and seen[0] == key:
            self._count("hits")
            return entry
        with slot.lock:  # one loader per niche; readers of the old entry carry on meanwhile
            if slot.entry is not None and slot.seen is not None and slot.seen[0] == key:
                self._count("hits")
                return slot.entry
            self._count("misses")
            return self._refresh(niche, slot, location, key)

    def _refresh(self, niche: str, slot: _Slot, location: Location, key) -> NicheIndex:
        try:
            manifest_path, directory = self._manifest_path(location)
            raw = manifest_path.read_bytes()
            manifest = parse_manifest(raw, manifest_path)
            version = _version_of(raw, manifest)
        except (OSError, IndexIntegrityError) as exc:
            return self._keep_serving(niche, slot, f"cannot read the {niche} manifest: {exc}")
        if slot.entry is not None and slot.entry.version == version:
            slot.seen = (key, version)
            return slot.entry
        if version in slot.refused:
            slot.seen = (key, version)
            return self._keep_serving(niche, slot, slot.refused[version], log_it=False)
        if time.monotonic() < slot.retry_at.get(version, 0.0):
            return self._keep_serving(niche, slot, f"version {version} of {niche} failed to load a moment ago",
                                      log_it=False)
        try:
            entry = _load_version(niche, location, version, manifest, directory)
        except (IndexIntegrityError, ValueError, KeyError) as exc:  # the files themselves are wrong (first:
            # IndexIntegrityError is a RuntimeError)
            log.error("version %s of %s at %s refused: %s", version, niche, directory, exc)
            reason = f"version {version} of {niche} refused: {str(exc).replace(str(directory), '<index dir>')}"
            slot.refused[version], slot.seen = reason, (key, version)
            self._count("refused")
            return self._keep_serving(niche, slot, reason)
        except (TransientLoadError, OSError, MemoryError, RuntimeError) as exc:
            # may pass (a publish mid-way, file handles, memory; faiss raises RuntimeError for I/O):
            # try again later, not on every query (verifying a large index is not free)
            slot.retry_at[version] = time.monotonic() + RETRY_TRANSIENT_S
            why = str(exc).replace(str(directory), "<index dir>")
            return self._keep_serving(niche, slot, f"version {version} of {niche} could not be loaded "
                                                   f"({type(exc).__name__}: {why}); retrying in {RETRY_TRANSIENT_S:.0f} s")
        old = slot.entry
        slot.entry, slot.seen = entry, (key, version)
        self._count("loads")
        self._last_load_ms = entry.load_ms
        log.info("loaded %s version %s (%d vectors, %.1f ms)%s", niche, version, entry.ntotal, entry.load_ms,
                 f", replacing {old.version}" if old else "")
        return entry

    def _manifest_path(self, location: Location) -> tuple[Path, Path]:
        if location.kind == "versioned":
            store = VersionedIndex(location.root)
            directory = store.path(store.current() or "")
            return directory / "manifest.json", directory
        return location.watch, location.root

    def _keep_serving(self, niche: str, slot: _Slot, reason: str, log_it: bool = True) -> NicheIndex:
        if slot.entry is None:
            if log_it:
                log.error("%s; nothing to serve for %s yet", reason, niche)
            raise NicheUnavailable(reason)
        if log_it:
            log.error("%s; still serving version %s", reason, slot.entry.version)
        return slot.entry

    def clear_cache(self) -> None:
        with self._lock:
            self._slots.clear()

    def cache_stats(self) -> dict:
        with self._lock:
            slots = dict(self._slots)
            counts = dict(self._counts)
        return {
            "cached_niches": sorted(n for n, s in slots.items() if s.entry is not None),
            "versions": {n: s.entry.version for n, s in sorted(slots.items()) if s.entry is not None},
            "refused_versions": {n: sorted(s.refused) for n, s in sorted(slots.items()) if s.refused},
            **counts,
            "last_load_ms": None if self._last_load_ms is None else round(self._last_load_ms, 3),
        }

    # -- queries

    def _local(self, niche: str) -> NicheIndex:
        entry = self.entry(niche)
        if entry.ntotal == 0:
            raise NicheUnavailable(f"the {niche} index ({entry.version}) is empty")
        return entry

    def similarity_percentile(self, vector, niche: str, k: int = 10, weight: str | None = None) -> ScoreResult:
        """The upload's percentile (0..100) in the niche; falls back to the remote, then to 50.0.

        Raises only for the caller's own mistakes: a vector of another dimension, an unknown
        ``weight``, or a ``k`` the reference was not built with.
        """
        if weight is not None and weight not in WEIGHTINGS:
            raise ValueError(f"unknown weight {weight!r}: use one of {', '.join(WEIGHTINGS)} or none")
        try:
            entry = self._local(niche)
            value, pct = entry.score(entry.check_vector(vector), k, weight)
            return ScoreResult(round(pct, 4), "local", f"local index {entry.version}", niche, k, weight,
                               round(value, 6), entry.version)
        except NicheUnavailable as exc:
            local_reason = str(exc)
        if self.remote is not None and not local_reason.startswith("unknown niche"):
            try:
                pct = float(self.remote.similarity_percentile(np.asarray(vector, np.float32), niche, k, weight))
                if not 0.0 <= pct <= 100.0:
                    raise ValueError(f"percentile {pct} outside 0..100")
                reason = f"{local_reason}; scored by {self.remote.name}"
                log.warning("%s: %s", niche, reason)
                return ScoreResult(round(pct, 4), "remote", reason, niche, k, weight)
            except Exception as exc:  # any remote failure becomes the next fallback, never the caller's
                log.warning("%s: %s failed: %s: %s", niche, self.remote.name, type(exc).__name__, exc)
                local_reason = f"{local_reason}; {self.remote.name} failed ({_remote_why(exc)})"
        reason = f"{local_reason}; default {DEFAULT_PERCENTILE} returned"
        log.warning("%s: %s", niche, reason)
        return ScoreResult(DEFAULT_PERCENTILE, "default", reason, niche, k, weight)

    def similar(self, vector, niche: str, k: int = 10) -> SimilarResult:
        """Up to ``k`` most similar references: video_id, similarity, title, thumbnail_url, views_per_hour."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        try:
            entry = self._local(niche)
            return SimilarResult(entry.similar(entry.check_vector(vector), k), source="local",
                                 reason=f"local index {entry.version}", version=entry.version)
        except NicheUnavailable as exc:
            local_reason = str(exc)
        if self.remote is not None and not local_reason.startswith("unknown niche"):
            try:
                items = self.remote.similar(np.asarray(vector, np.float32), niche, k)
                reason = f"{local_reason}; searched by {self.remote.name}"
                log.warning("%s: %s", niche, reason)
                return SimilarResult(items, source="remote", reason=reason)
            except Exception as exc:
                log.warning("%s: %s failed: %s: %s", niche, self.remote.name, type(exc).__name__, exc)
                local_reason = f"{local_reason}; {self.remote.name} failed ({_remote_why(exc)})"
        log.warning("%s: %s; no similar references", niche, local_reason)
        return SimilarResult([], source="default", reason=f"{local_reason}; no similar references")

    def title_percentile(self, vector, niche: str, k: int = 10) -> ScoreResult:
        """A title's percentile among the niche's titles (CLIP text tower); 50.0 when unavailable."""
        try:
            entry = self._local(niche)
            value, pct = entry.title_score(entry.check_vector(vector), k)
            return ScoreResult(round(pct, 4), "local", f"local title vectors {entry.version}", niche, k, None,
                               round(value, 6), entry.version)
        except NicheUnavailable as exc:
            reason = f"{exc}; default {DEFAULT_PERCENTILE} returned"
        log.warning("%s: %s", niche, reason)
        return ScoreResult(DEFAULT_PERCENTILE, "default", reason, niche, k)

    def index_info(self) -> dict[str, dict]:
        """Per niche, from its manifest (nothing is loaded): what a person asks of an index."""
        return {niche: self._info(niche) for niche in self.niches()}

    def _info(self, niche: str) -> dict:
        location = self._location(niche)
        info = {"exists": False, "num_vectors": 0, "dimension": None, "file_size_mb": None, "last_modified": None,
                "index_type": None, "embedding_model": None, "version": None, "snapshot": None}
        if location is None:
            return info
        try:
            manifest_path, directory = self._manifest_path(location)
            manifest = read_manifest(manifest_path)
        except (OSError, IndexIntegrityError) as exc:
            return {**info, "error": str(exc)}
        index_path = file_path(directory, manifest, INDEX_FILE) if location.kind == "published" or \
            INDEX_FILE in manifest.get("files", {}) else manifest_path
        stat = index_path.stat() if index_path.exists() else None
        embedding = manifest.get("embedding") or {}
        slot = self._slots.get(niche)
        return {**info, "exists": True, "num_vectors": int(manifest.get("ntotal", 0)), "dimension": manifest.get("dim"),
                "file_size_mb": round(sum(f["bytes"] for f in manifest.get("files", {}).values()) / 2**20, 3),
                "last_modified": (datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
                                  if stat else None),
                "index_type": manifest.get("factory"), "embedding_model": embedding.get("model"),
                "weights": _describe_weights(embedding) if embedding else None,
                "version": manifest.get("version") or _version_of(manifest_path.read_bytes(), manifest),
                "snapshot": manifest.get("snapshot"),
                "serving_version": slot.entry.version if slot and slot.entry else None}


def _version_of(raw: bytes, manifest: dict) -> str:
    """A version name: the engine's own (versioned roots) or the snapshot + manifest digest."""
    digest = hashlib.sha256(raw).hexdigest()[:10]
    base = manifest.get("version") or manifest.get("snapshot") or "build"
    return f"{base}+{digest}"
