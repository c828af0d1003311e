"""Where vectors come from: an array, a float32 ``.npy`` or an embeddings parquet, read in batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from thumblab_dagster.lib.engine.index_dir import as_float32

DEFAULT_BATCH = 65_536


class VectorSource:
    """Rows of float32 vectors, read in batches and by position, never all at once."""
    n: int
    d: int

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted positions, read in one pass."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.d), dtype=np.float32)
        lo = 0
        for start, batch in self.batches(DEFAULT_BATCH):
            hi = np.searchsorted(rows, start + len(batch))
            out[lo:hi] = batch[rows[lo:hi] - start]
            lo = hi
            if lo == len(rows):
                break
        return out


class ArraySource(VectorSource):
    def __init__(self, array: np.ndarray):
        if array.ndim != 2:
            raise ValueError(f"expected a 2-d array of vectors, got shape {array.shape}")
        self.array, (self.n, self.d) = array, array.shape

    def batches(self, batch_size: int):
        for start in range(0, self.n, batch_size):
            yield start, as_float32(self.array[start:start + batch_size])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return as_float32(self.array[np.asarray(rows, dtype=np.int64)])


class NpyFileSource(VectorSource):
    """A float32 ``.npy`` file read batch by batch with plain reads: unlike a memory map, the
    pages read do not stay in the process's resident set."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise ValueError(f"{self.path} must hold a C-ordered float32 2-d array, found {dtype} {shape}")
        self.n, self.d = shape

    def batches(self, batch_size: int):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, self.n, batch_size):
                batch = np.empty((min(batch_size, self.n - start), self.d), dtype=np.float32)
                f.readinto(memoryview(batch).cast("B"))
                yield start, batch


class ParquetSource(VectorSource):
    """An embeddings parquet: one fixed-size-list (or list) float column."""

    def __init__(self, path: str | os.PathLike, column: str = "embedding"):
        self.path, self.column = Path(path), column
        self.file = pq.ParquetFile(self.path)
        if column not in self.file.schema_arrow.names:
            raise ValueError(f"{self.path} has no {column!r} column (columns: {self.file.schema_arrow.names})")
        self.n = self.file.metadata.num_rows
        field_type = self.file.schema_arrow.field(column).type
        self.d = getattr(field_type, "list_size", None) or len(next(self.batches(1))[1][0])

    def batches(self, batch_size: int):
        start = 0
        for record_batch in self.file.iter_batches(batch_size=batch_size, columns=[self.column]):
            values = record_batch.column(0).flatten().to_numpy(zero_copy_only=False)
            batch = as_float32(values.reshape(len(record_batch), -1))
            yield start, batch
            start += len(batch)


def open_source(vectors, column: str = "embedding") -> VectorSource:
    """An array, a ``.npy`` path (memory-mapped) or a parquet path as a ``VectorSource``."""
    if isinstance(vectors, VectorSource):
        return vectors
    if isinstance(vectors, np.ndarray):
        return ArraySource(vectors)
    path = Path(vectors)
    if path.suffix == ".npy":
        return NpyFileSource(path)
    if path.suffix == ".parquet":
        return ParquetSource(path, column)
    raise ValueError(f"cannot read vectors from {path}: give an array, a .npy or a .parquet file")


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of ``size`` row positions out of ``n`` (all rows when size >= n)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else np.arange(n)
