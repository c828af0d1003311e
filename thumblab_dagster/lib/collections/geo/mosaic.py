"""Reading an embedding mosaic (a GeoTIFF, one band per embedding dimension), strip by strip.

``open_mosaic(path)`` validates the file and says what is wrong in one line naming it: the band
count (``EXPECTED_BANDS`` by default; any >= 1 with ``expected_bands=None``), the band type, a
CRS, a north-up transform (GDAL's ``b == d == 0``, ``a > 0``, ``e < 0``) and a nodata value the
band type can hold. ``read_strips`` then yields full-width row strips as one-byte codes in pixel
order (pixel i of a strip is row ``row0 + i // width``, column ``i % width``), so no caller ever
holds the whole ``(height, width, bands)`` array, and never in float32.

Storage is one byte a pixel-dimension, decoded as ``x = code * scale + offset`` (``CodeScale``):

| band type | code | scale, offset | why |
|---|---|---|---|
| uint8 | the value | 1/255, 0 | linear through zero: cosine of the codes is cosine of x/255 (and of the values) |
| int8 | value + 128 | 1, -128 | exact: x is the value |
| float32 | round((x - min_j) / scale_j) | (max_j - min_j) / 255, min_j | valid pixels' range (one more pass); error <= scale_j/2 |

Nodata rule (``NODATA_RULE``): a pixel is nodata when every band equals the file's nodata value
(NaN counts as equal to a NaN nodata), or the file's per-dataset mask (an internal or ``.msk``
mask band) is 0 there, or, for float32, any band is NaN or infinite (such a vector cannot be
stored). A single band equal to the nodata value is a legitimate embedding value. Nodata
pixels keep a code (the converted value, 0 for non-finite floats) that means nothing; the mask
says which they are.

The content fingerprint is the sha256 of the file's bytes (``fingerprint``): it needs no
decoding, so a sensor can afford it on every new or touched file, and equal bytes mean equal
pixels, transform, CRS and nodata. A file rewritten with identical pixels (new compression) gets
a new fingerprint and is rebuilt once: conservative, never stale.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine  # rasterio's own (affine is its dependency, not ours)
from rasterio.windows import Window

from thumblab_dagster.lib.engine.files import sha256_file
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.scan import CodeScale

log = logging.getLogger(__name__)

EXPECTED_BANDS = 128
ACCEPTED_DTYPES = ("uint8", "int8", "float32")
MAX_STRIP_BYTES = 64 * 1024**2     # one strip of source values (rows x width x bands) at most
PROGRESS_STEPS = 20                # a report every 5% of rows
FINGERPRINT_METHOD = "sha256 of the GeoTIFF file bytes"
NODATA_RULE = ("all bands equal the nodata value, or the per-dataset mask is 0, "
               "or (float32) any band is not finite")
FORMULA = "x = code * scale + offset"


class MosaicError(ValueError):
    """A mosaic that cannot be read as an embedding grid; the message names the file and the fix."""


@dataclass(frozen=True)
class Mosaic:
    """A validated mosaic's description (the file is reopened for each pass)."""

    path: Path
    height: int
    width: int
    bands: int
    dtype: str
    crs: str                    # "EPSG:32643", or WKT when the CRS has no authority code
    transform: Affine
    nodata: float | None
    per_dataset_mask: bool
    block_height: int

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def geotransform(self) -> list[float]:
        """GDAL order: (c, a, b, f, d, e) = (x origin, pixel width, row rotation, y origin, column rotation, pixel height)."""
        return [float(v) for v in self.transform.to_gdal()]

    def strip_rows(self, max_bytes: int = MAX_STRIP_BYTES) -> int:
        """Rows a strip holds: within ``max_bytes`` of source values, whole blocks where possible."""
        itemsize = np.dtype(self.dtype).itemsize
        rows = max(1, max_bytes // max(1, self.width * self.bands * itemsize))
        rows = min(rows, -(-self.height // PROGRESS_STEPS))   # a progress line at least every 5% of rows
        if rows >= self.block_height:
            rows -= rows % self.block_height   # whole tiles: each is decompressed once
        return min(rows, self.height)


@dataclass
class Strip:
    """Rows ``[row0, row0 + rows)`` in pixel order: ``codes`` (rows*width, bands) uint8, ``nodata`` (rows*width,)."""

    row0: int
    rows: int
    codes: np.ndarray
    nodata: np.ndarray


def _fail(path: Path, message: str) -> MosaicError:
    return MosaicError(f"{path}: {message}")


def open_mosaic(path: str | os.PathLike, expected_bands: int | None = EXPECTED_BANDS) -> Mosaic:
    """Validate a GeoTIFF as an embedding mosaic; ``expected_bands`` None accepts any band count >= 1."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file: give the path of a GeoTIFF mosaic")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise _fail(path, f"not a raster rasterio can read ({str(exc).splitlines()[0][:160]}): "
                          "give a GeoTIFF mosaic") from None
    with src:
        return _validated(path, src, expected_bands)


def _validated(path: Path, src, expected_bands: int | None) -> Mosaic:
    if expected_bands is not None and src.count != expected_bands:
        raise _fail(path, f"has {src.count} bands, expected {expected_bands} (one per embedding dimension): "
                          "give a mosaic with that many bands or change the expected band count")
    dtypes = sorted(set(src.dtypes))
    if len(dtypes) != 1:
        raise _fail(path, f"bands have different types ({', '.join(dtypes)}): every band must share one type")
    if dtypes[0] not in ACCEPTED_DTYPES:
        raise _fail(path, f"bands are {dtypes[0]}; accepted: uint8 (stored as is), int8 (stored +128), "
                          "float32 (quantised per dimension): convert the mosaic (gdal_translate -ot)")
    if src.crs is None:
        raise _fail(path, "has no CRS: georeference it (e.g. gdal_edit.py -a_srs EPSG:32643 FILE)")
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise _fail(path, f"transform is rotated or sheared (b={t.b:g}, d={t.d:g}): warp it to a north-up grid "
                          "(gdalwarp) first")
    if not (t.a > 0 and t.e < 0):
        raise _fail(path, f"transform is not north-up (pixel width {t.a:g}, pixel height {t.e:g}; need > 0 and < 0): "
                          "warp it to a north-up grid (gdalwarp) first")
    nodata = src.nodata
    if nodata is not None and not math.isnan(nodata) and not _fits(nodata, dtypes[0]):
        raise _fail(path, f"nodata value {nodata:g} does not fit its {dtypes[0]} bands: fix it "
                          "(gdal_edit.py -a_nodata VALUE FILE) or unset it")
    flags = src.mask_flag_enums
    per_dataset = all(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags)
    return Mosaic(path=path, height=src.height, width=src.width, bands=src.count, dtype=dtypes[0],
                  crs=src.crs.to_string(), transform=t, nodata=nodata, per_dataset_mask=per_dataset,
                  block_height=int(src.block_shapes[0][0]))


def _fits(value: float, dtype: str) -> bool:
    if np.dtype(dtype).kind == "f":
        return bool(np.isfinite(np.float32(value))) or math.isinf(value)
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def fingerprint(path: str | os.PathLike) -> str:
    """The mosaic's content fingerprint (``FINGERPRINT_METHOD``), the house's one sha256."""
    return sha256_file(path)


# --- reading -------------------------------------------------------------------------------

def _raw_strips(mosaic: Mosaic, max_bytes: int, progress: Progress | None, stage: str
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(row0, values (bands, rows, width) in the source type, nodata (rows, width)) strip by strip."""
    rows = mosaic.strip_rows(max_bytes)
    with rasterio.open(mosaic.path) as src:
        for row0 in range(0, mosaic.height, rows):
            window = Window(0, row0, mosaic.width, min(rows, mosaic.height - row0))
            values = src.read(window=window)
            nodata = _nodata(mosaic, src, values, window)
            yield row0, values, nodata
            done = row0 + values.shape[1]
            if done == mosaic.height or done * PROGRESS_STEPS // mosaic.height > row0 * PROGRESS_STEPS // mosaic.height:
                report(log, progress, stage, f"{stage}: {done:,} / {mosaic.height:,} rows of {mosaic.path.name} "
                                             f"({100 * done // mosaic.height}%)")


def _nodata(mosaic: Mosaic, src, values: np.ndarray, window: Window) -> np.ndarray:
    """The nodata rule (``NODATA_RULE``) on one strip."""
    out = np.zeros(values.shape[1:], dtype=bool)
    if mosaic.nodata is not None:
        if math.isnan(mosaic.nodata):
            out |= np.isnan(values).all(axis=0)
        else:
            out |= (values == values.dtype.type(mosaic.nodata)).all(axis=0)
    if mosaic.per_dataset_mask:
        out |= src.read_masks(1, window=window) == 0
    if values.dtype.kind == "f":
        out |= ~np.isfinite(values).all(axis=0)
    return out


def code_scale(mosaic: Mosaic, max_bytes: int = MAX_STRIP_BYTES, progress: Progress | None = None) -> CodeScale:
    """How the mosaic's values become codes (see the module's table).

    float32 mosaics take one read pass here for the per-dimension range of valid pixels.
    """
    if mosaic.dtype == "uint8":
        return CodeScale.uniform(mosaic.bands, 1 / 255)
    if mosaic.dtype == "int8":
        return CodeScale.uniform(mosaic.bands, 1.0, -128.0)
    low = np.full(mosaic.bands, np.inf, np.float64)
    high = np.full(mosaic.bands, -np.inf, np.float64)
    for _, values, mask in _raw_strips(mosaic, max_bytes, progress, "range"):
        valid = values[:, ~mask]                     # (bands, valid pixels of the strip)
        if valid.size:
            low = np.minimum(low, valid.min(axis=1))
            high = np.maximum(high, valid.max(axis=1))
    if not np.all(np.isfinite(low)):
        raise all_nodata(mosaic)
    scale = (high - low) / 255
    scale[scale == 0] = 1.0                          # a constant dimension: code 0 decodes to it exactly
    return CodeScale(scale, low)


def all_nodata(mosaic: Mosaic) -> MosaicError:
    return _fail(mosaic.path, "every pixel is nodata: there is nothing to index")


def read_strips(mosaic: Mosaic, scale: CodeScale, max_bytes: int = MAX_STRIP_BYTES,
                progress: Progress | None = None) -> Iterator[Strip]:
    """The mosaic as uint8 codes in pixel order, one full-width strip at a time."""
    for row0, values, nodata in _raw_strips(mosaic, max_bytes, progress, "read"):
        codes = _codes(values, mosaic.dtype, scale)          # (bands, rows, width) uint8
        rows = values.shape[1]
        del values
        yield Strip(row0, rows, np.moveaxis(codes, 0, -1).reshape(rows * mosaic.width, mosaic.bands),
                    nodata.reshape(-1))


def _codes(values: np.ndarray, dtype: str, scale: CodeScale) -> np.ndarray:
    if dtype == "uint8":
        return values
    if dtype == "int8":
        return values.view(np.uint8) ^ np.uint8(0x80)       # two's complement byte + 128 (mod 256)
    out = values - scale.offset[:, None, None]
    out /= scale.scale[:, None, None]
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)
