"""Mosaics written once a session (each well under a megabyte) and their pixel stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from thumblab_dagster.lib.collections.geo.store import PixelStore, build_pixel_store
from thumblab_dagster_tests.collections.geo.mosaics import (
    UTM_CRS,
    UTM_TRANSFORM,
    WGS84_TRANSFORM,
    embedding_field,
    write_mosaic,
)

BANDS = 16


@dataclass
class Built:
    path: Path           # the GeoTIFF
    values: np.ndarray   # (bands, height, width) as written
    nodata: np.ndarray   # (height, width) bool: the pixels the mosaic marks nodata
    store: PixelStore


def _build(tmp: Path, name: str, values: np.ndarray, marked: np.ndarray, **write) -> Built:
    path = write_mosaic(tmp / f"{name}.tif", values, **write)
    build_pixel_store(path, tmp / f"{name}_store", expected_bands=BANDS, max_strip_bytes=64 * 1024)
    return Built(path, values, marked, PixelStore(tmp / f"{name}_store"))


def nodata_region(height: int, width: int) -> np.ndarray:
    """A rectangle and a triangle of nodata."""
    rows, cols = np.mgrid[:height, :width]
    return ((rows >= 20) & (rows < 70) & (cols >= 30) & (cols < 120)) | (rows + cols < 25)


@pytest.fixture(scope="session")
def geo_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("geo")


@pytest.fixture(scope="session")
def wgs84(geo_tmp) -> Built:
    """200 rows x 300 columns, uint8, EPSG:4326, no nodata."""
    values = np.rint(embedding_field(200, 300, BANDS, seed=1)).astype(np.uint8)
    return _build(geo_tmp, "viewport_13.0000_77.5500", values, np.zeros((200, 300), bool),
                  crs="EPSG:4326", transform=WGS84_TRANSFORM)


@pytest.fixture(scope="session")
def utm(geo_tmp) -> Built:
    """300 rows x 200 columns, uint8, UTM zone 43N (EPSG:32643)."""
    values = np.rint(embedding_field(300, 200, BANDS, seed=2)).astype(np.uint8)
    return _build(geo_tmp, "viewport_utm", values, np.zeros((300, 200), bool), crs=UTM_CRS, transform=UTM_TRANSFORM)


@pytest.fixture(scope="session")
def holes(geo_tmp) -> Built:
    """150 x 260, uint8 with nodata 0: a nodata region, and valid pixels with some (not all) bands 0."""
    values = np.rint(embedding_field(150, 260, BANDS, seed=3)).astype(np.uint8)
    mask = nodata_region(150, 260)
    values[:, mask] = 0
    values[:5, 100:110, 200:210] = 0          # a few zero bands: still data
    return _build(geo_tmp, "viewport_holes", values, mask, crs=UTM_CRS, transform=UTM_TRANSFORM, nodata=0)


@pytest.fixture(scope="session")
def signed(geo_tmp) -> Built:
    """int8 (stored + 128), UTM, 120 x 90."""
    values = (np.rint(embedding_field(120, 90, BANDS, seed=4)) - 128).astype(np.int8)
    return _build(geo_tmp, "viewport_int8", values, np.zeros((120, 90), bool), crs=UTM_CRS, transform=UTM_TRANSFORM)


@pytest.fixture(scope="session")
def floats(geo_tmp) -> Built:
    """float32 in about [-1, 1] with a NaN nodata region, EPSG:4326, 110 x 140."""
    values = (embedding_field(110, 140, BANDS, seed=5) / 127.5 - 1).astype(np.float32)
    mask = nodata_region(110, 140)
    values[:, mask] = np.nan
    return _build(geo_tmp, "viewport_float32", values, mask, crs="EPSG:4326", transform=WGS84_TRANSFORM,
                  nodata=float("nan"))
