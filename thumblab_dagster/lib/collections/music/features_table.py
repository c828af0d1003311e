"""Features analysed elsewhere: a CSV or parquet table read as ids, a feature matrix and metadata.

    table = read_features("features.csv", id_column="track_id", exclude_columns=["genre_id"])
    ids, matrix, names, metadata = table          # or table.ids, table.matrix, ...

Numeric columns (any number of them; booleans count as 0/1) are the features, in table order;
every other column except the id is kept as metadata, and so are excluded columns (excluding
means "not a feature", e.g. a numeric label or year you still want to see). Non-finite values
are refused rather than imputed: a filled-in value would be a guess the search then trusts.
Each problem is one line naming the file, the column and, where there is one, the row's id.
``id_column=None`` numbers the rows ("0", "1", ...), for tables that have no id (benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MOSTLY_NUMERIC = 0.9     # a text column whose values parse as numbers this often is a broken feature column
SHOWN = 3                # examples named in an error


class FeatureTableError(ValueError):
    """A table that cannot be imported; the message names the file and what to do."""


class FeatureTable(NamedTuple):
    ids: np.ndarray            # str, one per row, unique
    matrix: np.ndarray         # float32 (rows, features)
    names: tuple[str, ...]     # the feature columns, in table order
    metadata: pd.DataFrame     # the id column first, then every non-feature column


def read_table(path: str | os.PathLike, id_column: str | None = None) -> pd.DataFrame:
    """The table as a frame with string column names; a CSV's id column stays text ("007" is not 7)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FeatureTableError(f"{path.name}: not a .csv or .parquet file: export the features as one of those")
    if not path.is_file():
        raise FeatureTableError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype={id_column: str} if id_column else None) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same message: this file is unreadable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FeatureTableError(f"{path.name}: cannot read it as {kind} ({first[:200]})") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _id_strings(frame: pd.DataFrame, path: Path, id_column: str | None) -> np.ndarray:
    if id_column is None:
        return np.arange(len(frame)).astype(str)
    column = frame[id_column]
    missing = column.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)[:SHOWN].tolist()
        raise FeatureTableError(f"{path.name}: id column {id_column!r} is empty in row(s) {rows} (0-based data rows): "
                                "every row needs an id")
    ids = column.astype(str).str.strip().to_numpy(dtype=str)
    counts = pd.Series(ids).value_counts()
    repeated = counts[counts > 1]
    if len(repeated):
        first = repeated.index[0]
        raise FeatureTableError(f"{path.name}: id {first!r} appears {repeated.iloc[0]} times in column {id_column!r} "
                                f"({len(repeated)} repeated id(s) in all): ids must be unique")
    return ids


def _is_feature(column: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(column) or (pd.api.types.is_numeric_dtype(column)
                                                   and not pd.api.types.is_complex_dtype(column))


def _broken_numeric(frame: pd.DataFrame, path: Path, ids: np.ndarray, candidates: Sequence[str]) -> None:
    """A text column that is mostly numbers has a stray value in it; saying so beats silently
    keeping a feature as metadata."""
    for name in candidates:
        column = frame[name]
        present = column.notna().to_numpy()
        if not present.any():
            continue
        parsed = pd.to_numeric(column, errors="coerce").notna().to_numpy()
        if parsed[present].mean() >= MOSTLY_NUMERIC and not parsed[present].all():
            row = int(np.flatnonzero(present & ~parsed)[0])
            raise FeatureTableError(f"{path.name}: column {name!r} is numbers except {column.iloc[row]!r} for id "
                                    f"{str(ids[row])!r}: fix that value, or pass --exclude-columns {name} to keep it as text")


def _non_finite(matrix: np.ndarray, names: Sequence[str], ids: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(matrix)
    if not bad.any():
        return
    col = int(np.flatnonzero(bad.any(axis=0))[0])
    rows = np.flatnonzero(bad[:, col])
    more = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
    raise FeatureTableError(f"{path.name}: column {names[col]!r} has a missing or infinite value for id "
                            f"{str(ids[rows[0]])!r}{more}: fill it in, drop those rows, or pass --exclude-columns {names[col]}")


def read_features(path: str | os.PathLike, id_column: str | None,
                  exclude_columns: Sequence[str] | None = None) -> FeatureTable:
    """The table at ``path`` as (ids, float32 matrix, feature names, metadata)."""
    path = Path(path)
    frame = read_table(path, id_column)
    columns = list(frame.columns)
    if id_column is not None and id_column not in columns:
        raise FeatureTableError(f"{path.name}: no id column {id_column!r}; columns: {', '.join(columns[:20])}"
                                f"{' ...' if len(columns) > 20 else ''}: pass --id-column with one of them")
    excluded = list(dict.fromkeys(str(c) for c in exclude_columns or ()))
    unknown = [c for c in excluded if c not in columns]
    if unknown:
        raise FeatureTableError(f"{path.name}: --exclude-columns names {', '.join(map(repr, unknown))}, which the "
                                f"table does not have; columns: {', '.join(columns[:20])}")
    if frame.empty:
        raise FeatureTableError(f"{path.name}: the table has no rows: export the features with at least one track")
    ids = _id_strings(frame, path, id_column)
    rest = [c for c in columns if c != id_column and c not in excluded]
    names = tuple(c for c in rest if _is_feature(frame[c]))
    _broken_numeric(frame, path, ids, [c for c in rest if c not in names])
    if not names:
        kept = ", ".join(c for c in columns if c != id_column) or "none"
        raise FeatureTableError(f"{path.name}: no numeric feature columns besides the id {id_column!r} (other "
                                f"columns: {kept}): the table needs numeric features, one column each")
    matrix = frame.loc[:, list(names)].astype(np.float64).to_numpy()
    _non_finite(matrix, names, ids, path)
    if np.any(np.abs(matrix) > np.finfo(np.float32).max):
        col = names[int(np.flatnonzero((np.abs(matrix) > np.finfo(np.float32).max).any(axis=0))[0])]
        raise FeatureTableError(f"{path.name}: column {col!r} holds values beyond float32's range: rescale it")
    kept = [c for c in columns if c != id_column and c not in names]
    metadata = frame.loc[:, kept].reset_index(drop=True)
    metadata.insert(0, id_column or ("row" if "row" not in kept else "_row"), ids)
    return FeatureTable(ids, matrix.astype(np.float32), names, metadata)
