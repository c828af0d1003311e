"""Alignment validation: one function for the asset checks and ``thumblab validate``.

An index is aligned when (a) every position maps to the id recorded for it (the id map and the
row-ordered metadata's id column agree: the manifest's ``id_column``, or for manifests written
before it was recorded, the ``id_column`` the caller knows), (b) stored
vectors searched again find themselves first with cosine >= 0.999, (c) the counts of index,
id map and metadata agree and ids are unique, and (d) every file matches the manifest's
checksum. ``check_alignment`` adds what only the pipeline knows: the ids and vectors the index
was built from. Position ids (row i is id i) are unique and aligned by construction; (b), (c)
and (d) still apply. When no id column is known, the report says so (metric ``id_column``)
instead of passing (a) in silence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from thumblab_dagster.lib.engine.ids import PositionIds, id_array, is_positions
from thumblab_dagster.lib.engine.index_dir import (
    METADATA_FILE,
    IndexIntegrityError,
    as_float32,
    checksum_problems,
    read_manifest,
)
from thumblab_dagster.lib.engine.search import finds_itself, validation_params
from thumblab_dagster.lib.engine.shards import load_any, shard_label_problems

MIN_SELF_COSINE = 0.999
MAX_RERANK_FACTOR = 1024  # x k candidates: the deepest a validator digs for a compressed vector
TIE_TOLERANCE = 1e-6
ID_COLUMN_UNKNOWN = "unknown (positions not compared with metadata)"


@dataclass
class AlignmentReport:
    passed: bool
    problems: list[str]
    metrics: dict = field(default_factory=dict)


def _self_search_failures(loaded, rows: np.ndarray, queries: np.ndarray, want_ids: list[str],
                          k: int, min_cosine: float | None) -> list[str]:
    """Rows whose own vector does not come back first (an identical vector's tie counts).

    Searches with generous settings: this checks alignment, not the tuned recall.
    """
    searcher = loaded.searcher.with_params(**validation_params(loaded.manifest.factory, loaded.searcher.params))
    sims, positions = searcher.search(queries, k)
    ids = loaded.ids

    def found_ids(pos_row):
        return [str(ids[p]) if 0 <= p < len(ids) else None for p in pos_row]

    if searcher.stored is not None:
        # Compressed codes can rank a vector's own code below hundreds of near neighbours'; dig
        # deeper for those rows only. Alignment of codes and stored rows is checked separately.
        depth = int(searcher.params.get("rerank_factor", 1))
        while depth < MAX_RERANK_FACTOR:
            missed = [i for i, (w, srow, prow) in enumerate(zip(want_ids, sims, positions))
                      if not finds_itself(w, found_ids(prow), srow, TIE_TOLERANCE)]
            if not missed:
                break
            depth *= 4
            sims[missed], positions[missed] = searcher.with_params(rerank_factor=depth).search(queries[missed], k)
    failures = []
    for row, want, sim_row, pos_row in zip(rows, want_ids, sims, positions):
        found = found_ids(pos_row)
        ok = finds_itself(want, found, sim_row, TIE_TOLERANCE)
        if ok and min_cosine is not None and sim_row[0] < min_cosine:
            failures.append(f"row {row} ({want}) finds itself with cosine {sim_row[0]:.4f} < {min_cosine}")
        elif not ok:
            failures.append(f"row {row} ({want}) -> {found[0]}")
    return failures


def _code_alignment_problems(loaded, rows: np.ndarray, stored: np.ndarray) -> list[str]:
    """The index's code at each sampled position decodes nearest to that position's stored row
    (not to another sampled row's): the compressed index and ``vectors.npy`` are in step."""
    decoded = as_float32(np.vstack([loaded.searcher.reconstruct(int(r), from_codes=True) for r in rows]))
    decoded /= np.maximum(np.linalg.norm(decoded, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(decoded @ stored.T, axis=1)
    wrong = [(int(rows[i]), int(rows[j])) for i, j in enumerate(nearest) if j != i]
    if not wrong:
        return []
    shown = ", ".join(f"position {a} decodes nearest to the stored vector of {b}" for a, b in wrong[:5])
    return [f"{len(wrong)}/{len(rows)} compressed codes are out of step with the stored vectors: {shown}"]


def validate_index_dir(directory: str | os.PathLike, sample: int = 200, seed: int = 0, k: int = 10,
                       min_cosine: float = MIN_SELF_COSINE, id_column: str | None = None) -> AlignmentReport:
    """Check an index directory on its own, with nothing but its files.

    ``id_column``: the metadata's id column, used when the manifest names none (manifests
    written before ``id_column`` was recorded); the manifest's own wins.
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except IndexIntegrityError as exc:
        return AlignmentReport(False, [str(exc)])
    problems = checksum_problems(directory, manifest)                                   # (d)
    try:
        loaded = load_any(directory, manifest, verify=False)
    except Exception as exc:  # unreadable index, shard or id map: report, don't crash
        return AlignmentReport(False, problems + [f"cannot load index: {exc}"])
    ids = loaded.ids
    metrics = {"ntotal": loaded.ntotal, "num_ids": len(ids), **({"ids": "positions"} if manifest.positions else {})}
    if manifest.is_sharded:                                                             # (a), (c) per shard
        problems += shard_label_problems(loaded)
        metrics["shards"] = len(loaded.shards)
    if loaded.ntotal != len(ids) or manifest.ntotal != loaded.ntotal:                   # (c)
        problems.append(f"counts differ: index {loaded.ntotal}, id map {len(ids)}, manifest {manifest.ntotal}")
    problems += _duplicate_problems(ids)
    if (directory / METADATA_FILE).exists():                                            # (a)
        id_problems, id_metrics = _metadata_alignment(directory / METADATA_FILE, manifest.id_column, id_column, ids)
        problems += id_problems
        metrics.update(id_metrics)
    n = min(sample, loaded.ntotal)                                                        # (b)
    if n and loaded.ntotal == len(ids):
        rows = np.sort(np.random.default_rng(seed).choice(loaded.ntotal, size=n, replace=False))
        stored, unreadable = [], []
        for r in rows:
            try:
                stored.append(loaded.reconstruct(int(r)))
            except (RuntimeError, IndexError):  # the position is not where the id map says
                unreadable.append(int(r))
        if unreadable:
            problems.append(f"{len(unreadable)} positions cannot be read back from their shard, "
                            f"e.g. {unreadable[:5]}")
            rows = np.asarray([r for r in rows if int(r) not in set(unreadable)], dtype=np.int64)
        queries = as_float32(np.vstack(stored)) if stored else np.empty((0, manifest.dim or 1), np.float32)
        if manifest.metric == "inner_product":
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        failures = _self_search_failures(loaded, rows, queries, [str(ids[r]) for r in rows], k,
                                         min_cosine if manifest.metric == "inner_product" else None) \
            if len(rows) else []
        if failures:
            problems.append(f"{len(failures)}/{n} stored vectors do not find themselves first: {failures[:5]}")
        metrics.update({"sampled": n, "self_search_failures": len(failures)})
        if loaded.searcher.stored is not None and len(rows) > 1:
            problems += _code_alignment_problems(loaded, rows, queries)
    return AlignmentReport(not problems, problems, metrics)


def _duplicate_problems(ids) -> list[str]:
    if isinstance(ids, PositionIds):
        return []  # positions are unique by construction
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) == len(ids):
        return []
    return [f"{len(ids) - len(unique)} duplicate ids in the id map, e.g. {unique[counts > 1][:5].tolist()}"]


def _metadata_alignment(path: Path, named: str | None, fallback: str | None, ids) -> tuple[list[str], dict]:
    """(a) with the column the manifest names or, for older manifests, the caller's ``fallback``.

    A fallback the metadata lacks is reported as unknown, not as a problem: the caller's guess
    (e.g. a command-line default) may belong to another collection; a named column is a promise.
    """
    if named is None and fallback is not None and not _has_column(path, fallback):
        return [], {"id_column": f"{ID_COLUMN_UNKNOWN}: no {fallback!r} column in {path.name}"}
    column = named or fallback
    if column is None:
        return [], {"id_column": ID_COLUMN_UNKNOWN}
    problems, checked = _metadata_id_problems(path, column, ids)
    metrics = {"positions_checked": checked}
    if named is None:
        metrics["id_column"] = f"{column} (given; the manifest names none)"
    return problems, metrics


def _has_column(path: Path, column: str) -> bool:
    try:
        return column in pq.read_schema(path).names
    except (OSError, pa.ArrowException):
        return True  # unreadable: the comparison reports it


def _metadata_id_problems(path: Path, column: str, ids) -> tuple[list[str], int]:
    """(a): the metadata's id column equals the id map, position by position."""
    try:
        recorded = pd.read_parquet(path, columns=[column])[column]
    except (KeyError, ValueError, pa.ArrowException):
        return [f"{path.name} has no {column!r} column, named as the id column"], 0
    if isinstance(ids, PositionIds):
        recorded = np.asarray(pd.to_numeric(recorded, errors="coerce").fillna(-1), dtype=np.int64)
    else:
        recorded = id_array(recorded.astype(str))
    problems = []
    if len(recorded) != len(ids):
        problems.append(f"counts differ: metadata {len(recorded)} rows, id map {len(ids)}")
    checked = min(len(ids), len(recorded))
    mapped = np.asarray(ids[np.arange(checked)])
    wrong = np.flatnonzero(mapped != recorded[:checked])
    if len(wrong):
        shown = ", ".join(f"position {i}: id map {_plain(mapped[i])!r}, metadata {_plain(recorded[i])!r}"
                          for i in wrong[:5])
        problems.append(f"{len(wrong)} positions map to a different id than recorded: {shown}")
    return problems, checked


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def check_alignment(directory: str | os.PathLike, expected_ids, expected_vectors: np.ndarray,
                    sample: int = 200, seed: int = 0, k: int = 10, id_column: str | None = None,
                    min_cosine: float | None = None) -> AlignmentReport:
    """``validate_index_dir`` plus the build's inputs: the id set equals ``expected_ids`` (None or
    ``"positions"`` for a position-id index: one row per vector) and, for up to ``sample`` of
    those rows, the row's own input vector finds its id first (with cosine >= ``min_cosine``
    when given: inputs the caller can recompute exactly, so a changed input is caught even
    when it still lands nearest its own row). ``id_column`` as for ``validate_index_dir``."""
    report = validate_index_dir(directory, sample=sample, seed=seed, k=k, id_column=id_column)
    problems, metrics = list(report.problems), dict(report.metrics)
    try:
        loaded = load_any(directory, verify=False)
    except Exception:
        return AlignmentReport(False, problems, metrics)
    expected_vectors = as_float32(expected_vectors)
    expected = PositionIds(len(expected_vectors)) if is_positions(expected_ids) else id_array(expected_ids)
    if isinstance(expected, PositionIds) and isinstance(loaded.ids, PositionIds):  # two ranges: no strings
        missing, extra = np.arange(len(loaded.ids), len(expected)), np.arange(len(expected), len(loaded.ids))
        metrics["expected_ids"] = len(expected)
    else:
        expected, have = id_array(expected), id_array(loaded.ids)
        missing, extra = np.setdiff1d(expected, have), np.setdiff1d(have, expected)
        metrics["expected_ids"] = int(len(np.unique(expected)))
    if len(missing):
        problems.append(f"{len(missing)} window ids missing from the index, e.g. {missing[:5].tolist()}")
    if len(extra):
        problems.append(f"{len(extra)} ids in the index are not in the window, e.g. {extra[:5].tolist()}")
    n = min(sample, len(expected))
    failures: list[str] = []
    if n and loaded.ntotal:
        rows = np.random.default_rng(seed).choice(len(expected), size=n, replace=False)
        failures = _self_search_failures(loaded, rows, expected_vectors[rows], [str(expected[r]) for r in rows], k,
                                         min_cosine)
        if failures:
            problems.append(f"{len(failures)}/{n} sampled vectors do not find their own id first, e.g. {failures[:5]}")
    metrics.update({"missing_ids": len(missing), "extra_ids": len(extra), "self_match_failures": len(failures)})
    return AlignmentReport(not problems, problems, metrics)
