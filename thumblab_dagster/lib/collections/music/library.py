"""The query side of a music library: similar tracks over a built index directory.

    library = MusicLibrary.load(directory)          # an index directory or a versioned root (<root>/current)
    library.similar("f3a9...", top_n=10)            # a track id in the library
    library.similar(raw_vector, top_n=10)           # raw features, e.g. of a file analysed on the fly
    library.similar(analysis, top_n=10)             # an analysis.Analysis (or its to_json dict)
    library.similar_many(["id1", "id2"], top_n=5)   # many queries, one batched search
    library.statistics()

The index's ids are the tracks' ids (file ids for the audio pipeline, the id column of an imported
table); ``metadata.parquet`` holds one row per track in index order with ``path``, ``title``,
``artist`` and ``album`` where known. The manifest's ``music_features`` field holds the
``vectors.Standardiser`` every query goes through, so a raw vector lands in the library's space.

Answers leave out the query itself and, unless ``exclude_duplicates=False``, its exact duplicates:
tracks whose similarity to the query vector is >= 1 - 1e-6 (the same audio under another name,
or the same file analysed again); a similar-tracks list that starts with copies of the query
says nothing. Similarity is the cosine of the standardised vectors (the index's inner product).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.music.vectors import (
    CORE_NAMES,
    MANIFEST_FIELD,
    FeatureError,
    Standardiser,
    encode,
)
from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.index_dir import METADATA_FILE, file_path
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.shards import load_any
from thumblab_dagster.lib.engine.spec import IndexSpec, resolve_spec
from thumblab_dagster.lib.engine.versions import POINTER, VersionedIndex

DUPLICATE_SIMILARITY = 1 - 1e-6     # at or above: the same vector as the query (float32 rounding aside)
SEARCH_SLACK = 8                    # extra neighbours fetched for the query itself and its duplicates
SHOWN_COLUMNS = ("path", "title", "artist", "album")


class UnknownTrack(LookupError):
    """A track id the library does not hold."""


def build_music_index(target: str | os.PathLike, raw, ids, names: Sequence[str], *, metadata: pd.DataFrame | None = None,
                      id_column: str | None = None, weights: Mapping | None = None, spec: IndexSpec | None = None,
                      standardiser: Standardiser | None = None) -> tuple[Manifest, Standardiser]:
    """Standardise ``raw`` (rows: tracks, columns: ``names``) and build an index directory at ``target``.

    The standardiser is fitted on ``raw`` (with group ``weights``) unless one is given, and stored
    in the manifest under ``music_features``; ``spec`` is the engine's (factory None: ``Flat`` at
    small sizes, ``choose_index`` beyond), its ``extra`` and ``embedding`` kept and added to.
    """
    standardiser = standardiser or Standardiser.fit(raw, names, weights)
    spec = resolve_spec(spec)
    spec = resolve_spec(spec, metadata=metadata if metadata is not None else spec.metadata,
                        id_column=id_column or spec.id_column,
                        extra={**spec.extra, MANIFEST_FIELD: standardiser.to_json()},
                        embedding={**standardiser.embedding(), **spec.embedding})
    return build_index_dir(target, standardiser.transform(raw), ids, spec), standardiser


@dataclass
class MusicLibrary:
    """A loaded index (``LoadedIndex`` or ``ShardedIndex``), its standardiser and its metadata."""

    loaded: object
    standardiser: Standardiser
    name: str
    metadata: pd.DataFrame | None = None
    _ids: list[str] = field(default_factory=list, repr=False)
    _positions: dict[str, int] = field(default_factory=dict, repr=False)
    _shown: dict[str, list] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.standardiser.dims != self.dimension:
            raise FeatureError(f"library {self.name}: the index holds {self.dimension}-d vectors but its "
                               f"{MANIFEST_FIELD} describe {self.standardiser.dims}: rebuild the index")
        self._ids = [str(track_id) for track_id in self.loaded.ids.tolist()]
        self._positions = {track_id: position for position, track_id in enumerate(self._ids)}
        rows = len(self.metadata) if self.metadata is not None else 0
        for column in SHOWN_COLUMNS:
            values = self.metadata[column].tolist() if rows and column in self.metadata else [None] * self.size
            self._shown[column] = [_plain(v) for v in values]

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str | None = None) -> MusicLibrary:
        """An index directory (single or sharded) or a versioned root's current version, verified."""
        directory = Path(directory)
        if (directory / POINTER).is_file():
            loaded = VersionedIndex(directory).load()
        elif directory.is_dir():
            loaded = load_any(directory)
        else:
            raise FileNotFoundError(f"no music library at {directory}: build one (thumblab music build) "
                                    "or import a features table (thumblab music import)")
        return cls.from_loaded(loaded, name or directory.name)

    @classmethod
    def from_loaded(cls, loaded, name: str) -> MusicLibrary:
        """A library over an index someone else loaded (e.g. ``publish.load_published``)."""
        manifest = loaded.manifest
        features = manifest.get(MANIFEST_FIELD)
        if features is None:
            raise FeatureError(f"library {name}: the index at {loaded.directory} has no {MANIFEST_FIELD} in its "
                               "manifest, so queries cannot be standardised: build it with thumblab music build/import")
        has_metadata = manifest.file_name(METADATA_FILE) in manifest.files   # published copies rename files
        metadata = pd.read_parquet(file_path(loaded.directory, manifest, METADATA_FILE)) if has_metadata else None
        return cls(loaded, Standardiser.from_json(features), name, metadata)

    # --- what it holds ------------------------------------------------------------------------------

    @property
    def manifest(self):
        return self.loaded.manifest

    @property
    def size(self) -> int:
        return int(self.loaded.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.manifest.dim)

    @property
    def ids(self) -> list[str]:
        return list(self._positions)

    def __contains__(self, track_id: object) -> bool:
        return str(track_id) in self._positions

    def position_of(self, track_id: str) -> int:
        try:
            return self._positions[str(track_id)]
        except KeyError:
            raise UnknownTrack(f"track {track_id!r} is not in library {self.name} ({self.size:,} tracks): "
                               "pass a track id it holds, or a file to analyse") from None

    def track(self, position: int) -> dict:
        """id, path, title, artist, album of the track at an index position (None where unknown)."""
        return {"id": self._ids[position], **{c: self._shown[c][position] for c in SHOWN_COLUMNS}}

    def artist_of(self, position: int) -> str | None:
        return self._shown["artist"][position]

    def vector_of(self, track_id: str) -> np.ndarray:
        """The track's standardised, L2-normalised vector as the index holds it."""
        return self._vector_at(self.position_of(track_id))

    def _vector_at(self, position: int) -> np.ndarray:
        return np.asarray(self.loaded.reconstruct(int(position)), dtype=np.float32)

    def vectors_at(self, positions: Sequence[int]) -> np.ndarray:
        return np.vstack([self._vector_at(p) for p in positions]) if len(positions) else \
            np.empty((0, self.dimension), np.float32)

    # --- queries -----------------------------------------------------------------------------------

    def encode(self, analysis_like) -> np.ndarray:
        """An analysis as this library's raw vector (67-d or 17-d, as the library was built)."""
        if self.standardiser.names[-len(CORE_NAMES):] != CORE_NAMES:
            raise FeatureError(f"library {self.name} was imported from a features table: query it with a track "
                               "id or a vector of its columns, not an audio analysis")
        return encode(analysis_like, include_tensorflow=self.standardiser.dims > len(CORE_NAMES))

    def transform(self, raw_vector) -> np.ndarray:
        """Raw features (one vector or rows) -> the library's standardised, normalised space."""
        return self.standardiser.transform(raw_vector)

    def query_vector(self, query) -> tuple[np.ndarray, int | None]:
        """(normalised vector, its own index position or None) for a track id, raw vector or analysis."""
        if isinstance(query, (str, np.str_)):
            position = self.position_of(query)
            return self._vector_at(position), position
        if isinstance(query, Mapping) or hasattr(query, "to_json"):
            query = self.encode(query)
        return self.transform(np.asarray(query, dtype=np.float64).ravel()), None

    def similar(self, query, top_n: int = 10, exclude_duplicates: bool = True) -> list[dict]:
        """The ``top_n`` most similar tracks (dicts: id, path, title, artist, similarity), best first."""
        return self.similar_many([query], top_n, exclude_duplicates)[0]

    def similar_many(self, queries: Sequence, top_n: int = 10, exclude_duplicates: bool = True) -> list[list[dict]]:
        """``similar`` for many queries in one batched search; one result list per query."""
        hits = self.neighbours(queries, top_n, exclude_duplicates)
        return [[self.result(p, s) for p, s in found] for found in hits]

    def result(self, position: int, similarity: float) -> dict:
        shown = self._shown
        return {"id": self._ids[position], "path": shown["path"][position], "title": shown["title"][position],
                "artist": shown["artist"][position], "similarity": float(similarity)}

    def neighbours(self, queries: Sequence, top_n: int, exclude_duplicates: bool = True) -> list[list[tuple[int, float]]]:
        """(position, similarity) lists, best first, without each query and (optionally) its duplicates."""
        top_n = _positive(top_n, "top_n")
        pairs = [self.query_vector(q) for q in queries]
        if not pairs:
            return []
        vectors = np.vstack([v for v, _ in pairs]).astype(np.float32)
        own = [p for _, p in pairs]
        kept: list[list[tuple[int, float]] | None] = [None] * len(pairs)
        pending, depth = list(range(len(pairs))), min(self.size, top_n + 1 + SEARCH_SLACK)
        while pending:
            scores, positions = self.loaded.search(vectors[pending], depth)
            still = []
            for row, q in enumerate(pending):
                ceiling = DUPLICATE_SIMILARITY if exclude_duplicates else math.inf
                found = [(p, s) for p, s in zip(positions[row].tolist(), scores[row].tolist())  # lists: fast loop
                         if p >= 0 and p != own[q] and s < ceiling]
                if len(found) < top_n and depth < self.size:
                    still.append(q)      # the query's copies filled the page: look deeper
                kept[q] = found[:top_n]
            pending, depth = still, min(self.size, depth * 4)
        return kept

    # --- figures -----------------------------------------------------------------------------------

    def index_type(self) -> str:
        """The faiss class holding the vectors (``IndexFlatIP``, ``IndexHNSWFlat``, ...)."""
        shards = getattr(self.loaded, "shards", None)
        index = self.loaded.index if shards is None else shards[0]
        name = type(faiss.downcast_index(index)).__name__
        return f"{name} x {len(shards)} shards" if shards and len(shards) > 1 else name

    def statistics(self) -> dict:
        """The guide's index figures this library knows (the store adds the file counts)."""
        return {"index_name": self.name, "index_type": self.index_type(), "vector_dimension": self.dimension,
                "total_vectors": self.size, "indexed_vectors": len(self._positions),
                "build_time": self.manifest.get("built_at"), "faiss_available": True, "index_loaded": True,
                "factory": self.manifest.factory, "version": self.manifest.get("version"),
                "feature_groups": self.standardiser.groups, "feature_weights": dict(self.standardiser.weights)}


def statistics(library: MusicLibrary | None, name: str) -> dict:
    """``library.statistics()``, or what can be said when no index is loaded (none built yet)."""
    if library is not None:
        return library.statistics()
    # faiss_available: this module imports faiss, so a caller that got here has it
    return {"index_name": name, "index_type": None, "vector_dimension": None, "total_vectors": 0,
            "indexed_vectors": 0, "build_time": None, "faiss_available": True, "index_loaded": False}


def _plain(value):
    """Metadata cells as JSON-able values: NaN/None -> None, numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)
