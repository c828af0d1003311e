"""Index directories on disk: the one writer of their files and the one reader.

An index directory holds ``index.faiss``, ``ids.npy`` (row i of the index <-> ids[i]; absent
when ids are implicit positions), ``metadata.parquet`` (the rows' metadata, same order) and
``manifest.json`` (``manifest.Manifest``) with the sha256 of every other file.
``write_index_dir`` saves an index that ``build.build_index_dir`` built (``shards`` writes the
sharded layout with the same sidecar and manifest helpers); ``load_index_dir`` validates the
manifest and verifies every checksum before ``faiss.read_index``, and loads ids with
``allow_pickle=False``. Published copies rename the files (``published_name``); ``publish``
copies them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.files import atomic_dir, sha256_file, write_json_atomic
from thumblab_dagster.lib.engine.ids import PositionIds, prepare_ids, read_ids, write_ids
from thumblab_dagster.lib.engine.manifest import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    IndexIntegrityError,
    Manifest,
    new_manifest,
    parse_manifest,
    read_manifest,
)
from thumblab_dagster.lib.engine.search import RangeHits, Searcher

__all__ = ["FORMAT_VERSION", "IDS_FILE", "INDEX_FILE", "MANIFEST_FILE", "IndexIntegrityError", "Manifest",
           "parse_manifest", "read_manifest", "sha256_file"]

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.parquet"
VECTORS_FILE = "vectors.npy"  # float32 rows for exact re-rank, only beside compressed indices
REFERENCE_FILE = "reference_scores.npy"  # sorted leave-one-out top-k mean similarities (percentiles)
WEIGHTED_REFERENCE_FILE = "reference_scores_weighted.npy"  # the same, neighbours weighted by a metadata column
METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """faiss wants float32, C-contiguous, two-dimensional."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    return vectors


def describe_files(directory: Path, names: list[str]) -> dict:
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


def write_sidecars(directory: Path, metadata: pd.DataFrame | None, extra_files: dict[str, os.PathLike] | None,
                   id_column: str | None = None) -> list[str]:
    """Row-ordered metadata and prepared files (moved in) beside an index; their names, for the manifest."""
    names = []
    if metadata is not None:
        if id_column is not None and id_column not in metadata:
            raise ValueError(f"the metadata has no {id_column!r} column, named as the id column; "
                             f"columns: {list(metadata.columns)}")
        metadata.reset_index(drop=True).to_parquet(directory / METADATA_FILE, index=False)
        names.append(METADATA_FILE)
    for name, path in (extra_files or {}).items():
        os.replace(path, directory / name)
        names.append(name)
    return names


def finish_manifest(directory: Path, names: list[str], fields: dict) -> Manifest:
    """Checksum ``names``, validate the manifest and write it last into ``directory``."""
    manifest = new_manifest({"format_version": FORMAT_VERSION, **fields, "files": describe_files(directory, names),
                             "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "faiss_version": faiss.__version__}, directory)
    write_json_atomic(directory / MANIFEST_FILE, manifest.to_json())
    return manifest


def write_index_dir(target: str | os.PathLike, index: faiss.Index, ids, *, factory: str, metric: str,
                    metadata: pd.DataFrame | None = None, embedding: dict | None = None,
                    source_partitions: list[str] | None = None, extra: dict | None = None,
                    extra_files: dict[str, os.PathLike] | None = None, id_column: str | None = None) -> Manifest:
    """Write index + ids (+ metadata) + manifest into ``target`` as one atomic directory swap.

    ``ids`` are strings (``ids.npy``) or ``None``/``"positions"`` (row i is id i, no file).
    ``id_column`` names the metadata column holding each row's id (the validator compares them).
    ``extra_files`` (name -> path) are moved in and covered by the manifest's checksums;
    ``extra`` adds manifest fields (typed build figures or a collection's own).
    """
    try:
        ids = prepare_ids(ids, index.ntotal)
    except ValueError as exc:
        raise IndexIntegrityError(f"refusing to write: index has {index.ntotal} vectors but {exc}") from None
    if metadata is not None and len(metadata) != index.ntotal:
        raise IndexIntegrityError(f"refusing to write: {len(metadata)} metadata rows for {index.ntotal} vectors")
    with atomic_dir(target) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        ids_entry, id_files = write_ids(tmp, ids)
        names = [INDEX_FILE, *id_files, *write_sidecars(tmp, metadata, extra_files, id_column)]
        manifest = finish_manifest(tmp, names, {
            "factory": factory, "metric": metric, "dim": int(index.d), "ntotal": int(index.ntotal),
            "ids": ids_entry, "id_column": id_column, "embedding": embedding or {},
            "source_partitions": sorted(source_partitions or []), **(extra or {})})
    log.info("wrote %s over %s vectors to %s", factory, f"{index.ntotal:,}", target)
    return manifest


def checksum_problems(directory: str | os.PathLike, manifest: Manifest) -> list[str]:
    """Every way the files in ``directory`` differ from what the manifest recorded."""
    directory = Path(directory)
    problems = []
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected.bytes:
            problems.append(f"{name} has {path.stat().st_size} bytes, manifest says {expected.bytes}")
        elif sha256_file(path) != expected.sha256:
            problems.append(f"{name} sha256 differs from the manifest")
    return problems


def searcher_for(parts: list[faiss.Index], manifest: Manifest, directory: Path) -> Searcher:
    """A searcher with the manifest's tuned parameters and, when stored, the re-rank vectors."""
    stored = (np.load(file_path(directory, manifest, manifest.stored_vectors), mmap_mode="r", allow_pickle=False)
              if manifest.stored_vectors else None)
    return Searcher(parts, manifest.metric, dict(manifest.search_params), stored, float(manifest.range_margin))


@dataclass
class LoadedIndex:
    index: faiss.Index
    ids: np.ndarray | PositionIds      # len(), ids[pos], ids[positions], tolist()
    manifest: Manifest
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


def verified(directory: Path, manifest: Manifest, what: str = "index") -> None:
    problems = checksum_problems(directory, manifest)
    if problems:
        raise IndexIntegrityError(f"{what} at {directory} fails its manifest: {'; '.join(problems)}")


def load_files(directory: str | os.PathLike, index_name: str, ids_name: str | None, manifest: Manifest,
               verify: bool = True) -> LoadedIndex:
    """Load an index file and its ids (``ids_name``: on-disk name; ignored for position ids)."""
    directory = Path(directory)
    if verify:
        verified(directory, manifest)
    index = faiss.read_index(str(directory / index_name))
    ids = read_ids(directory, manifest, None if manifest.positions else ids_name)
    if verify and not index.ntotal == len(ids) == manifest.ntotal:  # unverified loads are for validators
        raise IndexIntegrityError(f"index at {directory} has {index.ntotal} vectors, {len(ids)} ids and a "
                                  f"manifest that says {manifest.ntotal}")
    return LoadedIndex(index, ids, manifest, directory, {"index": index_name, "ids": ids_name})


def load_index_dir(directory: str | os.PathLike, verify: bool = True) -> LoadedIndex:
    """Load an index directory, verifying every checksum first."""
    return load_files(directory, INDEX_FILE, None, read_manifest(directory), verify=verify)


# --- the published copy the scoring service loads ----------------------------------------

def published_name(name: str, file: str) -> str:
    """``index.faiss`` -> ``<name>.index``; every other file -> ``<name>_<file>`` (``tech_ids.npy``)."""
    return f"{name}.index" if file == INDEX_FILE else f"{name}_{file}"


def published_names(name: str) -> dict:
    return {"index": published_name(name, INDEX_FILE), "ids": published_name(name, IDS_FILE),
            "manifest": published_name(name, MANIFEST_FILE)}


def file_path(directory: str | os.PathLike, manifest: Manifest, file: str) -> Path:
    """Where a file the manifest names by its index-directory name lives (published copies rename)."""
    return Path(directory) / manifest.file_name(file)
