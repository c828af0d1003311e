"""Alignment validation: one function for the asset checks and ``thumblab validate``.

An index is aligned when (a) every position maps to the id recorded for it (the id map and the
row-ordered metadata agree), (b) stored vectors searched again find themselves first with
cosine >= 0.999, (c) the counts of index, id map and metadata agree and ids are unique, and
(d) every file matches the manifest's checksum. ``check_alignment`` adds what only the
pipeline knows: the ids and vectors the index was built from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from thumblab_dagster.lib.engine.index_dir import (
    METADATA_FILE,
    IndexIntegrityError,
    as_float32,
    checksum_problems,
    read_manifest,
)
from thumblab_dagster.lib.engine.search import finds_itself, validation_params
from thumblab_dagster.lib.engine.shards import SHARDED, load_any, shard_label_problems

MIN_SELF_COSINE = 0.999
MAX_RERANK_FACTOR = 1024  # x k candidates: the deepest a validator digs for a compressed vector
TIE_TOLERANCE = 1e-6


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
    searcher = loaded.searcher.with_params(**validation_params(loaded.manifest.get("factory", "Flat"),
                                                               loaded.searcher.params))
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
                       min_cosine: float = MIN_SELF_COSINE) -> AlignmentReport:
    """Check an index directory on its own, with nothing but its files."""
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
    ids = [str(i) for i in loaded.ids]
    metrics = {"ntotal": loaded.ntotal, "num_ids": len(ids)}
    if manifest.get("layout") == SHARDED:                                                # (a), (c) per shard
        problems += shard_label_problems(loaded)
        metrics["shards"] = len(loaded.shards)
    if loaded.ntotal != len(ids) or manifest.get("ntotal") != loaded.ntotal:             # (c)
        problems.append(f"counts differ: index {loaded.ntotal}, id map {len(ids)}, manifest {manifest.get('ntotal')}")
    unique, counts = np.unique(np.asarray(ids), return_counts=True)
    if len(unique) != len(ids):
        problems.append(f"{len(ids) - len(unique)} duplicate ids in the id map, e.g. {unique[counts > 1][:5].tolist()}")
    if (directory / METADATA_FILE).exists():                                              # (a)
        recorded = pd.read_parquet(directory / METADATA_FILE, columns=["video_id"])["video_id"].astype(str).tolist()
        if len(recorded) != len(ids):
            problems.append(f"counts differ: metadata {len(recorded)} rows, id map {len(ids)}")
        mismatched = [(i, a, b) for i, (a, b) in enumerate(zip(ids, recorded)) if a != b]
        if mismatched:
            shown = ", ".join(f"position {i}: id map {a!r}, metadata {b!r}" for i, a, b in mismatched[:5])
            problems.append(f"{len(mismatched)} positions map to a different id than recorded: {shown}")
        metrics["positions_checked"] = min(len(ids), len(recorded))
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
        queries = as_float32(np.vstack(stored)) if stored else np.empty((0, manifest.get("dim", 1)), np.float32)
        if manifest.get("metric") == "inner_product":
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        failures = _self_search_failures(loaded, rows, queries, [ids[r] for r in rows], k,
                                         min_cosine if manifest.get("metric") == "inner_product" else None) \
            if len(rows) else []
        if failures:
            problems.append(f"{len(failures)}/{n} stored vectors do not find themselves first: {failures[:5]}")
        metrics.update({"sampled": n, "self_search_failures": len(failures)})
        if loaded.searcher.stored is not None and len(rows) > 1:
            problems += _code_alignment_problems(loaded, rows, queries)
    return AlignmentReport(not problems, problems, metrics)


def check_alignment(directory: str | os.PathLike, expected_ids, expected_vectors: np.ndarray,
                    sample: int = 200, seed: int = 0, k: int = 10) -> AlignmentReport:
    """``validate_index_dir`` plus the build's inputs: the id set equals ``expected_ids`` and,
    for up to ``sample`` of those rows, the row's own input vector finds its id first."""
    report = validate_index_dir(directory, sample=sample, seed=seed, k=k)
    problems, metrics = list(report.problems), dict(report.metrics)
    expected_ids = [str(i) for i in expected_ids]
    metrics["expected_ids"] = len(set(expected_ids))
    try:
        loaded = load_any(directory, verify=False)
    except Exception:
        return AlignmentReport(False, problems, metrics)
    have = {str(i) for i in loaded.ids}
    missing, extra = sorted(set(expected_ids) - have), sorted(have - set(expected_ids))
    if missing:
        problems.append(f"{len(missing)} window ids missing from the index, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} ids in the index are not in the window, e.g. {extra[:5]}")
    n = min(sample, len(expected_ids))
    failures: list[str] = []
    if n and loaded.ntotal:
        rows = np.random.default_rng(seed).choice(len(expected_ids), size=n, replace=False)
        failures = _self_search_failures(loaded, rows, as_float32(expected_vectors)[rows],
                                         [expected_ids[r] for r in rows], k, None)
        if failures:
            problems.append(f"{len(failures)}/{n} sampled vectors do not find their own id first, e.g. {failures[:5]}")
    metrics.update({"missing_ids": len(missing), "extra_ids": len(extra), "self_match_failures": len(failures)})
    return AlignmentReport(not problems, problems, metrics)
