"""The one index writer and reader: build, save with a manifest, verify, load, publish.

An index directory holds ``index.faiss``, ``ids.npy`` (row i of the index <-> ids[i]),
``metadata.parquet`` (the rows' metadata, same order) and ``manifest.json`` with the sha256 of
every other file. Readers verify the manifest before ``faiss.read_index`` and load ids with
``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.files import atomic_dir, sha256_file, write_json_atomic
from thumblab_dagster.lib.engine.search import RangeHits, Searcher

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
METADATA_FILE = "metadata.parquet"
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.npy"  # float32 rows for exact re-rank, only beside compressed indices
REFERENCE_FILE = "reference_scores.npy"  # sorted leave-one-out top-k mean similarities (percentiles)
WEIGHTED_REFERENCE_FILE = "reference_scores_weighted.npy"  # the same, neighbours weighted (e.g. by views)
METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class IndexIntegrityError(RuntimeError):
    """An index directory or published copy does not match its manifest."""


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """faiss wants float32, C-contiguous, two-dimensional."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    return vectors


def build_index(vectors: np.ndarray, factory: str = "Flat", metric: str = "inner_product") -> faiss.Index:
    """Build an index over ``vectors`` (already L2-normalised for cosine). Row order is kept."""
    vectors = as_float32(vectors)
    index = faiss.index_factory(vectors.shape[1], factory, METRICS[metric])
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def ids_array(ids) -> np.ndarray:
    """Ids as a fixed-width unicode array, so ``np.load(allow_pickle=False)`` can read them."""
    arr = np.asarray([str(i) for i in ids])
    return arr if arr.size else np.asarray([], dtype="<U1")


def _describe_files(directory: Path, names: list[str]) -> dict:
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


def write_sidecars(directory: Path, metadata: pd.DataFrame | None,
                   extra_files: dict[str, os.PathLike] | None) -> list[str]:
    """Row-ordered metadata and prepared files (moved in) beside an index; their names, for the manifest."""
    names = []
    if metadata is not None:
        metadata.reset_index(drop=True).to_parquet(directory / METADATA_FILE, index=False)
        names.append(METADATA_FILE)
    for name, path in (extra_files or {}).items():
        os.replace(path, directory / name)
        names.append(name)
    return names


def write_index_dir(target: str | os.PathLike, index: faiss.Index, ids, *, factory: str, metric: str,
                    metadata: pd.DataFrame | None = None, embedding: dict | None = None,
                    source_partitions: list[str] | None = None, extra: dict | None = None,
                    extra_files: dict[str, os.PathLike] | None = None) -> dict:
    """Write index + ids (+ metadata) + manifest into ``target`` as one atomic directory swap.

    ``extra_files`` (name -> path) are moved in and covered by the manifest's checksums.
    """
    ids = ids_array(ids)
    if index.ntotal != len(ids):
        raise IndexIntegrityError(f"refusing to write: index has {index.ntotal} vectors but "
                                  f"{len(ids)} ids")
    if metadata is not None and len(metadata) != len(ids):
        raise IndexIntegrityError(f"refusing to write: {len(metadata)} metadata rows for {len(ids)} ids")
    with atomic_dir(target) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        np.save(tmp / IDS_FILE, ids, allow_pickle=False)
        names = [INDEX_FILE, IDS_FILE] + write_sidecars(tmp, metadata, extra_files)
        manifest = {
            "format_version": FORMAT_VERSION,
            "factory": factory,
            "metric": metric,
            "dim": int(index.d),
            "ntotal": int(index.ntotal),
            "files": _describe_files(tmp, names),
            "embedding": embedding or {},
            "source_partitions": sorted(source_partitions or []),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "faiss_version": faiss.__version__,
            **(extra or {}),
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    manifest_path = path / MANIFEST_FILE if path.is_dir() else path
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise IndexIntegrityError(f"no manifest at {manifest_path}: the index was not written by "
                                  "thumblab or was only partly copied") from None
    return parse_manifest(raw, manifest_path)


def parse_manifest(raw: bytes, source: os.PathLike | str) -> dict:
    """A manifest from its bytes (readers that hash what they parse read the file once)."""
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexIntegrityError(f"manifest {source} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise IndexIntegrityError(f"manifest {source} has format_version {found!r}; this reader understands "
                                  f"{FORMAT_VERSION}")
    return manifest


def checksum_problems(directory: str | os.PathLike, manifest: dict) -> list[str]:
    """Every way the files in ``directory`` differ from what the manifest recorded."""
    directory = Path(directory)
    problems = []
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, manifest says {expected['bytes']}")
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{name} sha256 differs from the manifest")
    return problems


def searcher_for(parts: list[faiss.Index], manifest: dict, directory: Path) -> Searcher:
    """A searcher with the manifest's tuned parameters and, when stored, the re-rank vectors."""
    stored_name = manifest.get("stored_vectors")
    stored = (np.load(file_path(directory, manifest, stored_name), mmap_mode="r", allow_pickle=False)
              if stored_name else None)
    return Searcher(parts, manifest.get("metric", "inner_product"), dict(manifest.get("search_params") or {}),
                    stored, float(manifest.get("range_margin") or 0.0))


@dataclass
class LoadedIndex:
    index: faiss.Index
    ids: np.ndarray
    manifest: dict
    directory: Path
    file_names: dict = field(default_factory=dict)
    searcher: Searcher | None = None

    def __post_init__(self):
        if self.searcher is None:
            self.searcher = searcher_for([self.index], self.manifest, self.directory)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, row positions) with the manifest's tuned settings."""
        return self.searcher.search(as_float32(queries), k)

    def range_search(self, queries: np.ndarray, threshold: float) -> list[RangeHits]:
        return self.searcher.range_search(as_float32(queries), threshold)

    def reconstruct(self, position: int) -> np.ndarray:
        return self.searcher.reconstruct(position)


def load_files(directory: str | os.PathLike, index_name: str, ids_name: str, manifest: dict,
               verify: bool = True) -> LoadedIndex:
    directory = Path(directory)
    if verify:
        problems = checksum_problems(directory, manifest)
        if problems:
            raise IndexIntegrityError(f"index at {directory} fails its manifest: {'; '.join(problems)}")
    index = faiss.read_index(str(directory / index_name))
    ids = np.load(directory / ids_name, allow_pickle=False)
    if verify and index.ntotal != len(ids):  # unverified loads are for validators that report it
        raise IndexIntegrityError(f"index at {directory} has {index.ntotal} vectors but {len(ids)} ids")
    return LoadedIndex(index, ids, manifest, directory, {"index": index_name, "ids": ids_name})


def load_index_dir(directory: str | os.PathLike, verify: bool = True) -> LoadedIndex:
    """Load an index directory, verifying every checksum first."""
    return load_files(directory, INDEX_FILE, IDS_FILE, read_manifest(directory), verify=verify)


# --- the published copy the scoring service loads ----------------------------------------

def published_name(name: str, file: str) -> str:
    """``index.faiss`` -> ``<name>.index``; every other file -> ``<name>_<file>`` (``tech_ids.npy``)."""
    return f"{name}.index" if file == INDEX_FILE else f"{name}_{file}"


def published_names(name: str) -> dict:
    return {"index": published_name(name, INDEX_FILE), "ids": published_name(name, IDS_FILE),
            "manifest": published_name(name, MANIFEST_FILE)}


def file_path(directory: str | os.PathLike, manifest: dict, file: str) -> Path:
    """Where a file the manifest names by its index-directory name lives (published copies rename)."""
    return Path(directory) / manifest.get("published_names", {}).get(file, file)
