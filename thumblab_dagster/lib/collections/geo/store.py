"""A viewport's pixel store: every pixel's embedding as one byte a dimension, in pixel order.

A store directory (written as one set, swapped in whole: ``atomic_dir``) holds

| file | content |
|---|---|
| ``all_embeddings.npy`` | (height * width, bands) uint8 codes; pixel i is row ``i // width``, column ``i % width`` |
| ``nodata_mask.npy`` | (height * width,) bool, True where nodata (``mosaic.NODATA_RULE``); a byte a pixel: any reader can map it |
| ``norms.npy`` | (height * width,) float32 ``|x|`` of each decoded pixel (0 for nodata): the scan's cosine denominator |
| ``all_embeddings_float32.npy`` | optional (``float32_copy``): the decoded vectors, for consumers of the plan's float32 file |
| ``metadata.json`` | ``metadata.plan_metadata``: the grid, the decoding, counts, fingerprint, build settings |

Files are written front to back with plain writes as strips arrive (rows come in pixel order),
so nothing is memory-mapped for writing and the process holds one strip at a time.

The sampled index's vectors are the grid sample: rows and columns ``0, F, 2F, ...`` (F, the
sampling factor) in row-major order, skipping nodata pixels; sample j is pixel
``grid_positions(...)[j]``, recomputed from ``sample_grid`` and the mask (no coordinate arrays).
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.geo.coords import GeoGrid
from thumblab_dagster.lib.collections.geo.metadata import (
    METADATA_FILE,
    check_viewport_id,
    plan_metadata,
    read_metadata,
    viewport_id_from,
    write_metadata,
)
from thumblab_dagster.lib.collections.geo.mosaic import (
    EXPECTED_BANDS,
    FINGERPRINT_METHOD,
    FORMULA,
    MAX_STRIP_BYTES,
    NODATA_RULE,
    Mosaic,
    all_nodata,
    code_scale,
    fingerprint,
    open_mosaic,
    read_strips,
)
from thumblab_dagster.lib.engine.files import atomic_dir
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.scan import CodeScale, CosineScan, code_norms
from thumblab_dagster.lib.engine.sources import VectorSource

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "all_embeddings.npy"
NODATA_FILE = "nodata_mask.npy"
NORMS_FILE = "norms.npy"
FLOAT32_FILE = "all_embeddings_float32.npy"
DEFAULT_SAMPLING_FACTOR = 4
STORAGE_DTYPE = "uint8"


class StoreError(ValueError):
    """A pixel store whose files do not match its metadata."""


# --- writing -------------------------------------------------------------------------------

class NpyWriter:
    """A C-ordered ``.npy`` file written front to back, row block after row block; ``close``
    refuses a file whose rows fall short of its header."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": shape})
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self.file.close()
        if self.rows != self.shape[0]:
            raise StoreError(f"{self.path}: wrote {self.rows:,} rows of {self.shape[0]:,}")


def build_pixel_store(mosaic_path: str | os.PathLike, directory: str | os.PathLike, *, viewport_id: str | None = None,
                      sampling_factor: int = DEFAULT_SAMPLING_FACTOR, faiss_index_type: str | None = None,
                      float32_copy: bool = False, expected_bands: int | None = EXPECTED_BANDS,
                      extra_settings: dict | None = None, max_strip_bytes: int = MAX_STRIP_BYTES,
                      progress: Progress | None = None) -> dict:
    """Read a mosaic strip by strip into a new store at ``directory`` (replaced in one step); its metadata.

    ``viewport_id`` None: from the file name or its sidecar (``viewport_id_from``). ``extra_settings``
    (json-able) join ``build_settings`` (e.g. the index's memory budget), which ``metadata.unchanged``
    compares with the next build's.
    """
    if not isinstance(sampling_factor, int) or sampling_factor < 1:
        raise ValueError(f"sampling factor must be a whole number >= 1, got {sampling_factor!r}")
    mosaic = open_mosaic(mosaic_path, expected_bands)
    viewport_id = check_viewport_id(viewport_id) if viewport_id is not None else viewport_id_from(mosaic.path)
    report(log, progress, "fingerprint", f"fingerprinting {mosaic.path.name} ({mosaic.path.stat().st_size:,} bytes)")
    content = fingerprint(mosaic.path)
    scale = code_scale(mosaic, max_strip_bytes, progress)
    settings = {"sampling_factor": sampling_factor, "faiss_index_type": faiss_index_type,
                "float32_copy": bool(float32_copy), "expected_bands": expected_bands, **(extra_settings or {})}
    with atomic_dir(directory) as tmp:
        nodata_count = _write_arrays(mosaic, scale, tmp, float32_copy, max_strip_bytes, progress)
        nodata = np.load(tmp / NODATA_FILE, mmap_mode="r", allow_pickle=False)
        sampled = len(grid_positions(mosaic.height, mosaic.width, sampling_factor, nodata))
        del nodata
        grid = GeoGrid(mosaic.height, mosaic.width, mosaic.transform, mosaic.crs, viewport_id)
        files = [EMBEDDINGS_FILE, NODATA_FILE, NORMS_FILE] + ([FLOAT32_FILE] if float32_copy else [])
        metadata = plan_metadata(
            viewport_id=viewport_id, mosaic_file=mosaic.path.name, height=mosaic.height, width=mosaic.width,
            bands=mosaic.bands, geotransform=mosaic.geotransform, crs=mosaic.crs,
            pixel_size_meters=grid.pixel_size_meters(), sampling_factor=sampling_factor, num_sampled_pixels=sampled,
            faiss_index_type=faiss_index_type, mosaic_fingerprint=content, fingerprint_method=FINGERPRINT_METHOD,
            source_dtype=mosaic.dtype, storage_dtype=STORAGE_DTYPE, dequantisation=dequantisation(mosaic.dtype, scale),
            nodata_pixels=nodata_count, valid_pixels=mosaic.n_pixels - nodata_count, nodata_rule=NODATA_RULE,
            sample_grid={"row_start": 0, "col_start": 0, "step": sampling_factor, "order": "row-major",
                         "skips": "nodata pixels"},
            files=files, build_settings=settings)
        write_metadata(tmp, metadata)
    report(log, progress, "store", f"pixel store for {viewport_id}: {mosaic.n_pixels:,} pixels "
                                   f"({nodata_count:,} nodata), {sampled:,} sampled every {sampling_factor}")
    return metadata


def _write_arrays(mosaic: Mosaic, scale: CodeScale, directory: Path, float32_copy: bool, max_bytes: int,
                  progress: Progress | None) -> int:
    n, bands = mosaic.n_pixels, mosaic.bands
    writers = {EMBEDDINGS_FILE: NpyWriter(directory / EMBEDDINGS_FILE, (n, bands), np.uint8),
               NODATA_FILE: NpyWriter(directory / NODATA_FILE, (n,), np.bool_),
               NORMS_FILE: NpyWriter(directory / NORMS_FILE, (n,), np.float32)}
    if float32_copy:
        writers[FLOAT32_FILE] = NpyWriter(directory / FLOAT32_FILE, (n, bands), np.float32)
    nodata_count = 0
    try:
        for strip in read_strips(mosaic, scale, max_bytes, progress):
            norms = code_norms(strip.codes, scale)
            norms[strip.nodata] = 0.0
            writers[EMBEDDINGS_FILE].write(strip.codes)
            writers[NODATA_FILE].write(strip.nodata)
            writers[NORMS_FILE].write(norms)
            if float32_copy:
                for lo in range(0, len(strip.codes), 1 << 16):   # decoded in pieces: no strip-sized float32 copy
                    writers[FLOAT32_FILE].write(scale.decode(strip.codes[lo:lo + (1 << 16)]))
            nodata_count += int(strip.nodata.sum())
    finally:
        for writer in writers.values():
            writer.file.close()
    for writer in writers.values():
        writer.close()
    if nodata_count == n:
        raise all_nodata(mosaic)
    return nodata_count


def dequantisation(source_dtype: str, scale: CodeScale) -> dict:
    """How codes decode, for metadata.json (and ``PixelStore`` reads it back)."""
    notes = {"uint8": "the mosaic's values / 255: linear, so cosine of the codes equals cosine of the values",
             "int8": "code - 128: the mosaic's int8 values exactly",
             "float32": "per-dimension min/max over valid pixels, 256 levels: error <= scale / 2"}
    return {"formula": FORMULA, "kind": source_dtype, "note": notes[source_dtype],
            "scale": [float(v) for v in scale.scale], "offset": [float(v) for v in scale.offset]}


def grid_positions(height: int, width: int, factor: int, nodata: np.ndarray) -> np.ndarray:
    """Pixel positions of the grid sample in order: rows and columns 0, F, 2F, ..., nodata skipped."""
    rows = np.arange(0, height, factor, dtype=np.int64)
    cols = np.arange(0, width, factor, dtype=np.int64)
    positions = (rows[:, None] * width + cols[None, :]).ravel()
    return positions[~np.asarray(nodata[positions], dtype=bool)]


# --- reading -------------------------------------------------------------------------------

class PixelStore:
    """A store directory (or a published viewport holding the same files), memory-mapped."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.metadata = read_metadata(self.directory)
        self.viewport_id: str = self.metadata["viewport_id"]
        self.height, self.width = int(self.metadata["mosaic_height"]), int(self.metadata["mosaic_width"])
        self.bands = int(self.metadata["embedding_dim"])
        self.n = self.height * self.width
        self.codes = self._array(EMBEDDINGS_FILE, (self.n, self.bands), np.uint8)
        self.nodata = self._array(NODATA_FILE, (self.n,), np.bool_)
        self.norms = self._array(NORMS_FILE, (self.n,), np.float32)
        deq = self.metadata["dequantisation"]
        self.scale = CodeScale(np.asarray(deq["scale"], np.float32), np.asarray(deq["offset"], np.float32))
        if self.scale.d != self.bands:
            raise StoreError(f"{self.directory / METADATA_FILE}: dequantisation has {self.scale.d} scales for "
                             f"{self.bands} bands: rebuild the viewport")
        self.grid = GeoGrid.from_geotransform(self.height, self.width, self.metadata["geotransform"],
                                              self.metadata["crs"], f"viewport {self.viewport_id}")

    def _array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        path = self.directory / name
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"{path} is missing: rebuild the viewport's pixel store") from None
        except ValueError as exc:
            raise StoreError(f"{path} is not a readable .npy file ({exc}): rebuild the viewport") from None
        if array.shape != shape or array.dtype != dtype:
            raise StoreError(f"{path} holds {array.dtype} {array.shape}, metadata.json says {np.dtype(dtype)} {shape}: "
                             "rebuild the viewport")
        return array

    def position(self, row: int, col: int) -> int:
        return int(row) * self.width + int(col)

    def vectors(self, positions) -> np.ndarray:
        """Decoded float32 vectors of pixel positions (any order)."""
        return self.scale.decode(self.codes[np.asarray(positions, dtype=np.int64)])

    @cached_property
    def scan(self) -> CosineScan:
        return CosineScan(self.codes, self.scale, self.norms, excluded=self.nodata)

    def sample_positions(self) -> np.ndarray:
        grid = self.metadata["sample_grid"]
        return grid_positions(self.height, self.width, int(grid["step"]), self.nodata)

    def sample_source(self) -> GridSample:
        """The grid sample as the engine's vector source (L2-normalised float32, for an inner-product index)."""
        return GridSample(self, self.sample_positions())


class GridSample(VectorSource):
    """Pixels at ``positions``, decoded and L2-normalised batch by batch from the memory-mapped codes."""

    def __init__(self, store: PixelStore, positions: np.ndarray):
        self.store, self.positions = store, np.asarray(positions, dtype=np.int64)
        self.n, self.d = len(self.positions), store.bands

    def _normalised(self, positions: np.ndarray) -> np.ndarray:
        vectors = self.store.vectors(positions)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    def batches(self, batch_size: int):
        for start in range(0, self.n, batch_size):
            yield start, self._normalised(self.positions[start:start + batch_size])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._normalised(self.positions[np.asarray(rows, dtype=np.int64)])
