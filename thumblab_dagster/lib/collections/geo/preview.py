"""A viewport at a glance: its embeddings projected to three colours (PCA), as a Cloud-Optimised GeoTIFF
with overviews and a small PNG.

The projection is fitted on the grid sample (at most ``FIT_SAMPLE`` pixels, seeded), then applied
strip by strip to every pixel (one strip of codes decoded at a time, never the whole grid in
float32); each component is stretched from its 2nd to its 98th percentile over the sample to
0..255. Nodata pixels are masked (an internal mask in the GeoTIFF, transparent in the PNG).

The GeoTIFF is written tiled, its overviews built (average, halving until the longer side is
under ``MIN_OVERVIEW_SIDE``), then copied by GDAL's COG driver keeping those overviews: tiles,
overviews and their order are the COG layout a map viewer streams by range requests. Files are
written beside their target and renamed in (``atomic_path``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.lib.engine.files import atomic_path
from thumblab_dagster.lib.engine.progress import Progress, report

log = logging.getLogger(__name__)

TIF_FILE, PNG_FILE = "preview.tif", "preview.png"
FIT_SAMPLE = 50_000
STRIP_PIXELS = 1 << 17           # pixels projected per strip: 64 MiB of float32 at 128 bands
BLOCK = 256                      # COG tile side
MIN_OVERVIEW_SIDE = 64
PNG_MAX_SIDE = 512               # small enough to travel base64 in the UI's metadata
STRETCH = (2, 98)                # percentiles each colour is stretched between


@dataclass(frozen=True)
class Projection:
    """RGB = clip((x - mean) @ components.T - low) / (high - low)) * 255, per component."""

    mean: np.ndarray          # (d,)
    components: np.ndarray    # (3, d)
    low: np.ndarray           # (3,)
    high: np.ndarray          # (3,)
    explained: np.ndarray     # (3,) share of the sample's variance each component carries

    def rgb(self, vectors: np.ndarray) -> np.ndarray:
        projected = (vectors - self.mean) @ self.components.T
        scaled = (projected - self.low) / np.maximum(self.high - self.low, 1e-12)
        return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Preview:
    tif: Path
    png: Path
    png_bytes: bytes
    explained: tuple[float, ...]
    overviews: tuple[int, ...]
    fingerprint: str


def fit_projection(store: PixelStore, sample: int = FIT_SAMPLE, seed: int = 0) -> Projection:
    """PCA to three components on (a seeded subset of) the grid sample's decoded vectors."""
    positions = store.sample_positions()
    if len(positions) == 0:
        raise ValueError(f"viewport {store.viewport_id} has no valid sampled pixel to fit a preview on")
    if len(positions) > sample:
        positions = np.sort(np.random.default_rng(seed).choice(positions, size=sample, replace=False))
    x = store.vectors(positions).astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = np.zeros((3, x.shape[1]))
    components[:min(3, len(vt))] = vt[:3]
    # A component's sign is arbitrary: fix it (largest loading positive) so a rebuild gives the same colours.
    signs = np.sign(components[np.arange(3), np.argmax(np.abs(components), axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    projected = centred @ components.T
    low, high = np.percentile(projected, STRETCH, axis=0)
    variance = singular ** 2
    explained = np.zeros(3)
    explained[:min(3, len(variance))] = (variance[:3] / max(variance.sum(), 1e-12))
    return Projection(mean.astype(np.float32), components.astype(np.float32), low.astype(np.float32),
                      high.astype(np.float32), explained)


def overview_factors(height: int, width: int) -> list[int]:
    """2, 4, 8, ... while the overview's longer side stays >= ``MIN_OVERVIEW_SIDE``."""
    factors, factor = [], 2
    while max(height, width) / factor >= MIN_OVERVIEW_SIDE:
        factors.append(factor)
        factor *= 2
    return factors


def write_preview(store_dir: str | os.PathLike, out_dir: str | os.PathLike, progress: Progress | None = None) -> Preview:
    """``out_dir/preview.tif`` (COG, RGB uint8, the mosaic's grid) and ``out_dir/preview.png``."""
    store, out_dir = PixelStore(store_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    projection = fit_projection(store)
    report(log, progress, "preview", f"preview of {store.viewport_id}: PCA fitted, first three components carry "
                                     f"{', '.join(f'{v:.0%}' for v in projection.explained)} of the variance")
    step = max(1, math.ceil(max(store.height, store.width) / PNG_MAX_SIDE))
    factors = overview_factors(store.height, store.width)
    with tempfile.TemporaryDirectory(prefix=".preview.", dir=out_dir) as scratch:
        tiled = Path(scratch) / "tiled.tif"
        small = _write_tiled(store, projection, tiled, step, progress)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tiled, "r+") as dst:
            if factors:
                dst.build_overviews(factors, Resampling.average)
        with atomic_path(out_dir / TIF_FILE) as tmp:
            rasterio.shutil.copy(tiled, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                                 OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE")
    png = _png_bytes(small)
    with atomic_path(out_dir / PNG_FILE) as tmp:
        tmp.write_bytes(png)
    report(log, progress, "preview", f"preview of {store.viewport_id}: {out_dir / TIF_FILE} with overviews "
                                     f"{factors or 'none (small)'}; {out_dir / PNG_FILE}")
    return Preview(out_dir / TIF_FILE, out_dir / PNG_FILE, png, tuple(float(v) for v in projection.explained),
                   tuple(factors), store.metadata["mosaic_fingerprint"])


def _write_tiled(store: PixelStore, projection: Projection, path: Path, step: int,
                 progress: Progress | None) -> np.ndarray:
    """The RGB grid as a tiled GeoTIFF, strip by strip; returns every ``step``-th pixel as RGBA (the PNG)."""
    tiled = store.height >= BLOCK and store.width >= BLOCK
    profile = {"driver": "GTiff", "height": store.height, "width": store.width, "count": 3, "dtype": "uint8",
               "crs": store.grid.crs, "transform": store.grid.transform, "photometric": "RGB", "interleave": "pixel",
               **({"tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK} if tiled else {})}
    rows = max(1, STRIP_PIXELS // store.width)
    rows = step * max(1, rows // step)            # strips keep the PNG's stride
    small = []
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, store.height, rows):
            row1 = min(row0 + rows, store.height)
            lo, hi = row0 * store.width, row1 * store.width
            rgb = projection.rgb(store.scale.decode(store.codes[lo:hi])).reshape(row1 - row0, store.width, 3)
            valid = ~np.asarray(store.nodata[lo:hi]).reshape(row1 - row0, store.width)
            rgb[~valid] = 0
            window = Window(0, row0, store.width, row1 - row0)
            dst.write(np.moveaxis(rgb, -1, 0), window=window)
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)
            small.append(np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])[::step, ::step])
            if row1 == store.height or (row1 * 10 // store.height) > (row0 * 10 // store.height):
                report(log, progress, "preview", f"preview: {row1:,} / {store.height:,} rows projected")
    return np.concatenate(small)


def _png_bytes(rgba: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
