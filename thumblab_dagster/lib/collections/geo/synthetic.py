"""A synthetic embedding mosaic for the demo (and benchmarks): spatially coherent, written block by block.

Land-cover-like classes (each an embedding centre) on a coarse grid of ``cell`` x ``cell``
patches, a smooth field that drifts every embedding slowly across the map, and per-pixel
noise: a query pixel finds its patch and the look-alike patches elsewhere, and thresholds
have matches, as on a real mosaic. Each ``block`` x ``block`` tile is computed on its own from a
seed derived from its position, so any size is written without holding the grid in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine  # rasterio's own (affine is its dependency, not ours)
from rasterio.windows import Window

DEMO_TRANSFORM = Affine(0.0001, 0.0, 77.55, 0.0, -0.0001, 13.04)   # about 11 m pixels near Bengaluru, EPSG:4326
DEMO_CRS = "EPSG:4326"


def write_synthetic_mosaic(path: str | os.PathLike, height: int = 300, width: int = 400, bands: int = 128, *,
                           seed: int = 0, classes: int = 8, cell: int = 32, noise: float = 12.0, block: int = 256,
                           crs: str = DEMO_CRS, transform: Affine = DEMO_TRANSFORM) -> Path:
    """A tiled uint8 GeoTIFF of ``height`` x ``width`` pixels and ``bands`` bands at ``path``."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 255, size=(classes, bands)).astype(np.float32)
    labels = rng.integers(0, classes, size=(-(-height // cell), -(-width // cell)))
    drift = rng.normal(0, 1, size=(2, bands)).astype(np.float32) * 25     # per band: change across x and y
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiled = height >= block and width >= block
    profile = {"driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": "uint8", "crs": crs,
               "transform": transform, "interleave": "pixel", "compress": "deflate",
               **({"tiled": True, "blockxsize": block, "blockysize": block} if tiled else {})}
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, block):
            for col0 in range(0, width, block):
                rows, cols = min(block, height - row0), min(block, width - col0)
                dst.write(_tile(seed, row0, col0, rows, cols, height, width, centres, labels, drift, cell, noise),
                          window=Window(col0, row0, cols, rows))
    return path


def _tile(seed: int, row0: int, col0: int, rows: int, cols: int, height: int, width: int, centres: np.ndarray,
          labels: np.ndarray, drift: np.ndarray, cell: int, noise: float) -> np.ndarray:
    r, c = np.mgrid[row0:row0 + rows, col0:col0 + cols]
    values = centres[labels[r // cell, c // cell]]                         # (rows, cols, bands)
    values += (c / max(width - 1, 1))[..., None] * drift[0] + (r / max(height - 1, 1))[..., None] * drift[1]
    values += np.random.default_rng([seed, row0, col0]).normal(0, noise, size=values.shape).astype(np.float32)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(2, 0, 1)
