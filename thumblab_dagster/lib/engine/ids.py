"""Ids: row i of an index <-> id i, as strings in ``ids.npy`` or as implicit positions.

String ids are stored as a fixed-width unicode array (``np.load(allow_pickle=False)`` reads
it back) and converted by numpy in one vector operation, never id by id in Python. Position
ids (row i is id i) have no file at all: a collection of 19 million rows would otherwise carry
a gigabyte of ``"0"``, ``"1"``, ... strings. ``PositionIds`` answers like the array it stands
for (``len``, ``ids[pos]``, ``ids[array]``, ``tolist()``) without materialising it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.engine.manifest import (
    ID_MAP_FILE,
    IDS_FILE,
    POSITION_IDS,
    STRING_IDS,
    IndexIntegrityError,
    Manifest,
)

POSITIONS = POSITION_IDS  # pass as ``ids`` (or None) to build an index whose ids are its row positions


class PositionIds:
    """Ids that are row positions: ``ids[i] == i`` for ``0 <= i < n``; nothing is stored."""

    kind = POSITION_IDS

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"PositionIds({self.n:,})"

    def __iter__(self):
        return iter(range(self.n))

    def __getitem__(self, key):
        if isinstance(key, slice):
            return np.arange(*key.indices(self.n), dtype=np.int64)
        if isinstance(key, (int, np.integer)):
            position = int(key) + (self.n if key < 0 else 0)
            if not 0 <= position < self.n:
                raise IndexError(f"position {int(key)} is out of range for {self.n:,} ids")
            return np.int64(position)  # as the array it stands for would
        positions = np.asarray(key)
        if positions.dtype == bool:
            if positions.shape != (self.n,):
                raise IndexError(f"boolean mask of shape {positions.shape} for {self.n:,} ids")
            return np.flatnonzero(positions)
        positions = positions.astype(np.int64)
        positions = np.where(positions < 0, positions + self.n, positions)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n):
            raise IndexError(f"positions out of range for {self.n:,} ids")
        return positions

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.arange(self.n, dtype=dtype or np.int64)

    def tolist(self) -> list[int]:
        return list(range(self.n))


def is_positions(ids) -> bool:
    """True for ``None``, ``"positions"`` and ``PositionIds``: ids are the row positions."""
    return ids is None or isinstance(ids, PositionIds) or (isinstance(ids, str) and ids == POSITIONS)


def id_array(ids) -> np.ndarray:
    """Ids as a one-dimensional fixed-width unicode array, converted by numpy in one step."""
    if isinstance(ids, PositionIds):
        ids = np.asarray(ids)
    elif hasattr(ids, "to_numpy"):  # pandas Series / Index
        ids = ids.to_numpy()
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.asarray([], dtype="<U1")
    if array.dtype.kind == "U":
        return array
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8")
    return array.astype(str)


def prepare_ids(ids, n: int):
    """``ids`` checked against ``n`` rows: a string array, or ``POSITIONS``."""
    if is_positions(ids):
        if isinstance(ids, PositionIds) and len(ids) != n:
            raise ValueError(f"{n:,} vectors but {len(ids):,} position ids: every vector needs exactly one id")
        return POSITIONS
    array = id_array(ids)
    if len(array) != n:
        raise ValueError(f"{n:,} vectors but {len(array):,} ids: every vector needs exactly one id")
    return array


def write_ids(directory: Path, ids) -> tuple[dict, list[str]]:
    """Save string ids (nothing for positions); the manifest's ``ids`` entry and the files written."""
    if is_positions(ids):
        return {"kind": POSITION_IDS}, []
    np.save(Path(directory) / IDS_FILE, id_array(ids), allow_pickle=False)
    return {"kind": STRING_IDS, "file": IDS_FILE}, [IDS_FILE]


def read_ids(directory: str | os.PathLike, manifest: Manifest, file: str | None = None):
    """The ids of an index directory or published copy; ``file`` overrides the on-disk name."""
    if manifest.positions:
        return PositionIds(manifest.ntotal)
    path = Path(directory) / (file or manifest.file_name(manifest.ids.file))
    if path.name.endswith(ID_MAP_FILE):  # sharded directories written before ids.npy kept them here
        return np.asarray(json.loads(path.read_text())["ids"], dtype=str)
    ids = np.load(path, allow_pickle=False)
    if ids.ndim != 1:
        raise IndexIntegrityError(f"{path} holds an array of shape {ids.shape}; ids must be one-dimensional")
    return ids


def concat_ids(first, second):
    """Ids of appended rows after the existing ones (positions stay positions)."""
    if is_positions(first) and is_positions(second):
        return POSITIONS
    if is_positions(first) or is_positions(second):
        raise ValueError("cannot mix position ids with string ids in one index")
    return np.concatenate([id_array(first), id_array(second)])
