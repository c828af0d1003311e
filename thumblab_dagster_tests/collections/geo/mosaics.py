"""Small embedding mosaics written with rasterio, for the geo tests (and the Dagster side's).

``embedding_field`` makes spatially coherent values: a few land-cover-like classes (each an
embedding centre) on a coarse grid, plus per-pixel noise, so a query finds its neighbourhood and
thresholds have matches; ``write_mosaic`` writes them as a tiled GeoTIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer

WGS84_TRANSFORM = Affine(0.0001, 0.0, 77.55, 0.0, -0.0001, 13.01)     # about 11 m pixels near Bengaluru
UTM_CRS = "EPSG:32643"
UTM_TRANSFORM = Affine(10.0, 0.0, 770_000.0, 0.0, -10.0, 1_440_000.0)   # UTM zone 43N, 10 m pixels


def embedding_field(height: int, width: int, bands: int, seed: int = 0, classes: int = 6,
                    cell: int = 25, noise: float = 12.0) -> np.ndarray:
    """(bands, height, width) float64 values in [0, 255]: a class per ``cell`` x ``cell`` block plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(30, 225, size=(classes, bands))
    labels = rng.integers(0, classes, size=(-(-height // cell), -(-width // cell)))
    labels = np.repeat(np.repeat(labels, cell, axis=0), cell, axis=1)[:height, :width]
    values = centres[labels] + rng.normal(0, noise, size=(height, width, bands))
    return np.clip(values, 0, 255).transpose(2, 0, 1)


def write_mosaic(path: str | Path, values: np.ndarray, *, crs: str | None = "EPSG:4326",
                 transform: Affine = WGS84_TRANSFORM, nodata=None, mask: np.ndarray | None = None,
                 tiled: bool = True) -> Path:
    """Write (bands, height, width) ``values`` (their dtype) as a GeoTIFF; ``mask`` (height, width),
    when given, is written as the file's internal per-dataset mask (0 = nodata)."""
    path = Path(path)
    bands, height, width = values.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": values.dtype.name,
               "transform": transform, "nodata": nodata, "interleave": "pixel"}
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def pixel_order(values: np.ndarray) -> np.ndarray:
    """(bands, height, width) -> (height * width, bands): pixel i is row i // width, column i % width."""
    bands = values.shape[0]
    return np.ascontiguousarray(np.moveaxis(values, 0, -1).reshape(-1, bands))


def centre_latlon(path: str | Path, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """What a user checks against: rasterio's pixel-centre coordinates, reprojected with pyproj."""
    with rasterio.open(path) as src:
        xs, ys = rasterio.transform.xy(src.transform, rows, cols, offset="center")
        crs = src.crs.to_string()
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(np.asarray(xs), np.asarray(ys))
    return np.asarray(lat), np.asarray(lon)


def brute_force_cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 cosine of every row with the query (0 for zero rows)."""
    vectors = vectors.astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    dots = vectors @ np.asarray(query, dtype=np.float64)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
