"""One verified version of one named index, with everything scoring needs. Never mutated.

``load_snapshot`` verifies the files against the manifest's checksums before faiss reads them,
then reads the metadata columns, the percentile references and the spec's side index. If a
file was swapped while it loaded (a publish in progress) it raises ``TransientLoadError``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.index_dir import (
    METADATA_FILE,
    IndexIntegrityError,
    file_path,
    load_files,
    published_names,
)
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.percentiles import row_weights, weighted_mean
from thumblab_dagster.lib.engine.publish import current_pointer
from thumblab_dagster.lib.engine.search import faiss_threads, threads_for
from thumblab_dagster.lib.engine.shards import load_any
from thumblab_dagster.lib.query.ranking import percentile_of, without_self
from thumblab_dagster.lib.query.results import EmbeddingMismatchError, IndexUnavailable, TransientLoadError
from thumblab_dagster.lib.query.spec import LibrarySpec


@dataclass(frozen=True)
class Location:
    kind: str          # "current" (a published version) | "published" (flat) | "versioned" | "directory"
    watch: Path        # the file whose change means "maybe a new version"
    root: Path


@functools.lru_cache(maxsize=1024)  # bounded: names come from requests
def published_location(root: Path, name: str) -> Location:
    """A published copy's current version: its manifest, watched through the ``current`` symlink
    (a new version is a new file), and the symlink, resolved once when it loads. Cached: building
    the paths cost a single query ~10 us, and they never change for a root and a name."""
    pointer = current_pointer(root, name)
    return Location("current", pointer / published_names(name)["manifest"], pointer)


def stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def version_of(raw: bytes, manifest: Manifest) -> str:
    """A version name: the engine's own (versioned roots) or the snapshot + manifest digest."""
    digest = hashlib.sha256(raw).hexdigest()[:10]
    base = manifest.get("version") or manifest.get("snapshot") or "build"
    return f"{base}+{digest}"


def mean32(values: np.ndarray) -> float:
    """``float(np.mean(values))`` of float32 similarities, bit for bit (the references were built with
    np.mean: a query must score exactly as a reference would), without np.mean's Python wrapper,
    which costs a single query tens of microseconds once the scan has evicted it from the caches."""
    total = np.add.reduce(values)  # np.mean's float32 pairwise sum
    return float(np.float32(float(total) / len(values)))  # its float64 division, rounded to float32


def _plain(value):
    """A metadata cell as JSON would have it: None for missing, Python scalars for numpy ones."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _reference_id(ids, position: int):
    """Row ``position``'s id: a string id, or the position itself (an int) when ids are implicit."""
    value = ids[position]
    return value.item() if isinstance(value, np.integer) else str(value)


@dataclass(eq=False)
class Snapshot:
    name: str
    version: str
    manifest: Manifest
    directory: Path
    spec: LibrarySpec
    index: object                     # LoadedIndex or ShardedIndex: .search(), .ids, .ntotal
    metadata: dict[str, np.ndarray]   # spec column -> row-ordered values (for similar())
    reference: np.ndarray | None
    weighted_reference: np.ndarray | None
    weights: dict[str, np.ndarray]
    side: faiss.Index | None           # the spec's side index (exact search), when built
    side_reference: np.ndarray | None
    load_ms: float
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    # Read on every query: cached, as a snapshot never changes (and a pydantic lookup is not free).
    @functools.cached_property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @functools.cached_property
    def reference_k(self) -> int | None:
        return (self.manifest.get("reference_scores") or {}).get("k")

    def check_vector(self, vector) -> np.ndarray:
        """The query as one unit float32 row, refusing another dimension with a clear error."""
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            model = (self.manifest.get("embedding") or {}).get("model", "an unknown model")
            raise EmbeddingMismatchError(f"the {self.name} index holds {self.dim}-d vectors from {model}; the "
                                         f"query has {vector.shape[1]} dimensions: embed it with the same model")
        flat = vector[0]
        norm = float(np.sqrt(flat.dot(flat)))  # np.linalg.norm's own arithmetic, without its Python wrapper
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("the query vector is zero or contains NaN/inf: nothing to compare")
        return vector / np.float32(norm)  # cosine similarity: compare directions

    def check_model(self, weights: dict) -> None:
        """Refuse a query embedded by another model or other weights than the index's."""
        built = self.manifest.get("embedding") or {}
        model = self.spec.model
        if built and model.identity(weights) != model.identity(built):
            raise EmbeddingMismatchError(
                f"the {self.name} index was built with {model.describe(built)}, the query embedder is "
                f"{model.describe(weights)}: similarities across models are meaningless. {model.hint}")

    def _unavailable(self, why: str) -> IndexUnavailable:
        return IndexUnavailable(f"the {self.name} index ({self.version}) {why}")

    def neighbours(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, positions = self.index.search(vector, k)
        keep = positions[0] >= 0
        return sims[0][keep], positions[0][keep]

    def score(self, vector: np.ndarray, k: int, weight: str | None) -> tuple[float, float, int]:
        """(top-k mean similarity, percentile, references ranked against): one search plus one binary search.

        Top-k like the reference was built: leave-one-out, so a reference's own vector is not
        its own neighbour and scores exactly at its reference percentile.
        """
        if self.reference is None or not len(self.reference):
            raise self._unavailable("has no percentile reference: rebuild it with reference_k")
        if k != self.reference_k:
            raise IndexUnavailable(f"the {self.name} reference was built from top-{self.reference_k} neighbours, "
                                   f"not {k}: rebuild the index or ask with k={self.reference_k}")
        sims, positions = self.neighbours(vector, k + 1)
        top = without_self(sims, k)
        sims, positions = sims[top], positions[top]
        if not len(sims):
            raise self._unavailable("returned no neighbours")
        if weight is None:
            value, reference = mean32(sims), self.reference
        else:
            if self.weighted_reference is None or weight not in self.weights:
                raise self._unavailable(f"has no {weight}-weighted reference")
            value, reference = weighted_mean(sims, self.weights[weight][positions]), self.weighted_reference
        return value, percentile_of(value, reference), len(reference)

    def similar(self, vector: np.ndarray, k: int) -> list[dict]:
        """The k nearest references: id (under the spec's key), similarity, the spec's columns."""
        sims, positions = self.neighbours(vector, k)
        ids, id_key = self.index.ids, self.spec.id_key
        out = []
        for sim, pos in zip(sims, positions):
            row = {id_key: _reference_id(ids, pos), "similarity": round(float(sim), 6)}
            for column in self.spec.columns:
                row[column] = _plain(self.metadata[column][pos]) if column in self.metadata else None
            out.append(row)
        return out

    def side_score(self, vector: np.ndarray, k: int) -> tuple[float, float, int]:
        """(top-k mean similarity, percentile, references) among the side index's vectors, leave-one-out."""
        if self.side is None or self.side_reference is None or not len(self.side_reference):
            label = self.spec.side.label if self.spec.side else "side-index"
            raise self._unavailable(f"was built without {label} vectors")
        with faiss_threads(threads_for(len(vector))):  # the main index's searcher does the same
            sims, _ = self.side.search(vector, min(k + 1, self.side.ntotal))
        value = mean32(sims[0][without_self(sims[0], k)])
        return value, percentile_of(value, self.side_reference), len(self.side_reference)


def reference_count(manifest: Manifest) -> int:
    """How many references a percentile from this index is ranked against (its sorted reference's
    rows, from the manifest alone); 0 when it was built without a reference."""
    entry = manifest.get("reference_scores")
    if not entry:
        return 0
    return int(entry.get("sampled_rows", manifest.get("ntotal", 0)))


def _file_stats(directory: Path, manifest: Manifest) -> dict:
    """Identity of every file the manifest covers (by its on-disk name), to spot a swap mid-load."""
    out = {}
    for name in manifest.get("files", {}):
        path = directory / name
        out[name] = stat_key(path) if path.exists() else None
    return out


def _original_names(manifest: Manifest) -> set:
    renamed = manifest.get("published_names")
    return set(renamed) if renamed else set(manifest.get("files", {}))


def load_snapshot(name: str, location: Location, version: str, manifest: Manifest, directory: Path,
                  spec: LibrarySpec) -> Snapshot:
    start = time.perf_counter()
    before = _file_stats(directory, manifest)
    if location.kind in ("published", "current"):  # verifies checksums before faiss.read_index
        names = published_names(name)
        loaded = load_files(directory, names["index"], names["ids"], manifest)
    else:
        loaded = load_any(directory, manifest)
    metadata = {}
    metadata_path = file_path(directory, manifest, METADATA_FILE)
    frame = pd.read_parquet(metadata_path) if METADATA_FILE in _original_names(manifest) else None
    if frame is not None:
        if len(frame) != loaded.ntotal:
            raise IndexIntegrityError(f"{metadata_path} has {len(frame)} rows for {loaded.ntotal} vectors")
        metadata = {c: frame[c].to_numpy(dtype=object) for c in spec.columns if c in frame}

    def load_array(file: str | None) -> np.ndarray | None:
        return np.load(file_path(directory, manifest, file), allow_pickle=False) if file else None

    reference_entry = manifest.get("reference_scores") or {}
    weighted_entry = reference_entry.get("weighted") or {}
    weights = {}
    if weighted_entry and frame is not None and weighted_entry.get("weight") in spec.weightings:
        weights[weighted_entry["weight"]] = row_weights(frame, weighted_entry["weight"])
    side_entry = (manifest.get(spec.side.key) if spec.side else None) or {}
    side = None
    if side_entry:
        side_vectors = load_array(side_entry["vectors"])
        side = faiss.IndexFlatIP(side_vectors.shape[1])
        side.add(np.ascontiguousarray(side_vectors, dtype=np.float32))
    reference, weighted = load_array(reference_entry.get("file")), load_array(weighted_entry.get("file"))
    side_reference = load_array(side_entry.get("reference"))
    # Every file is read by now: if one was swapped meanwhile, this version may be a mix. Retry later.
    if _file_stats(directory, manifest) != before:
        raise TransientLoadError(f"the {name} files changed while version {version} was loading (a publish "
                                 "in progress); the next query tries again")
    return Snapshot(
        name=name, version=version, manifest=manifest, directory=directory, spec=spec, index=loaded,
        metadata=metadata, reference=reference, weighted_reference=weighted, weights=weights, side=side,
        side_reference=side_reference, load_ms=(time.perf_counter() - start) * 1000.0)
