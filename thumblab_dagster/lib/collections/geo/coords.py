"""Pixels <-> places: (row, col) to the lat/lon of the pixel's centre, and back.

The grid is the mosaic's affine transform (GDAL geotransform ``(c, a, b, f, d, e)``, north-up:
``b == d == 0``). Pixel (row, col) covers ``[col, col + 1) x [row, row + 1)`` in pixel space; its
centre is ``(col + 0.5, row + 0.5)``. Coordinates in the mosaic's CRS are reprojected to EPSG:4326
with pyproj (``always_xy=True``: x/lon first, whatever the CRS's axis order says); a lat/lon goes
back through the inverse reprojection and ``~transform``, then ``floor``: a point on the edge
between two pixels belongs to the one right of / below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from pyproj import CRS, Geod, Transformer
from rasterio.transform import Affine  # rasterio's own (affine is its dependency, not ours)

WGS84 = "EPSG:4326"
EDGE = 1e-9   # pixels: a point on an edge, give or take float rounding, goes right / down


class OutsideMosaicError(ValueError):
    """A lat/lon that is not on the mosaic (or not a lat/lon at all)."""


@dataclass(frozen=True, eq=False)
class GeoGrid:
    """A north-up raster grid: ``height`` x ``width`` pixels, ``transform`` (pixel -> CRS), ``crs``."""

    height: int
    width: int
    transform: Affine
    crs: str
    name: str = field(default="the mosaic")   # how error messages call it (a viewport id)

    @classmethod
    def from_geotransform(cls, height: int, width: int, geotransform, crs: str, name: str = "the mosaic") -> GeoGrid:
        return cls(int(height), int(width), Affine.from_gdal(*geotransform), str(crs), name)

    @cached_property
    def _crs(self) -> CRS:
        return CRS.from_user_input(self.crs)

    @cached_property
    def _to_wgs84(self) -> Transformer:
        return Transformer.from_crs(self._crs, WGS84, always_xy=True)

    @cached_property
    def _from_wgs84(self) -> Transformer:
        return Transformer.from_crs(WGS84, self._crs, always_xy=True)

    # --- pixel -> place --------------------------------------------------------------------

    def xy(self, rows, cols, offset: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """CRS coordinates of pixel points (``offset`` 0.5: centres; 0 and 1: corners)."""
        cols = np.asarray(cols, dtype=np.float64) + offset
        rows = np.asarray(rows, dtype=np.float64) + offset
        t = self.transform
        return t.c + t.a * cols + t.b * rows, t.f + t.d * cols + t.e * rows

    def latlon(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) in EPSG:4326 of the pixels' centres."""
        lon, lat = self._to_wgs84.transform(*self.xy(rows, cols))
        return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)

    def footprints(self, rows, cols) -> np.ndarray:
        """Each pixel's outline as a closed (lon, lat) ring, counter-clockwise (GeoJSON's exterior order):
        shape (n, 5, 2). Corners are reprojected; edges between them are straight in lon/lat."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.float64))
        cols = np.atleast_1d(np.asarray(cols, dtype=np.float64))
        # north-west, south-west, south-east, north-east, north-west (north-up: row + 1 is south)
        corner_rows = np.stack([rows, rows + 1, rows + 1, rows, rows], axis=1)
        corner_cols = np.stack([cols, cols, cols + 1, cols + 1, cols], axis=1)
        lon, lat = self._to_wgs84.transform(*self.xy(corner_rows, corner_cols, offset=0.0))
        return np.stack([np.asarray(lon), np.asarray(lat)], axis=-1)

    # --- place -> pixel --------------------------------------------------------------------

    def rowcol(self, lat: float, lon: float) -> tuple[int, int]:
        """The pixel containing a lat/lon; a point off the mosaic is an ``OutsideMosaicError``."""
        lat, lon = _checked_latlon(lat, lon)
        x, y = self._from_wgs84.transform(lon, lat)
        col, row = ~self.transform @ (x, y)
        finite = math.isfinite(row) and math.isfinite(col)   # pyproj gives inf where the CRS does not reach
        row, col = (math.floor(row + EDGE), math.floor(col + EDGE)) if finite else (-1, -1)
        if not (0 <= row < self.height and 0 <= col < self.width):
            south, west, north, east = self.bounds_latlon
            raise OutsideMosaicError(
                f"lat {lat:.6f}, lon {lon:.6f} is outside {self.name} (it covers lat {south:.6f} to {north:.6f}, "
                f"lon {west:.6f} to {east:.6f}): pick a point inside")
        return int(row), int(col)

    @cached_property
    def bounds_latlon(self) -> tuple[float, float, float, float]:
        """(south, west, north, east) of the whole grid in EPSG:4326 (edges densified)."""
        (left, right), (top, bottom) = self.xy([0, self.height], [0, self.width], offset=0.0)
        west, south, east, north = self._to_wgs84.transform_bounds(
            min(left, right), min(top, bottom), max(left, right), max(top, bottom), densify_pts=21)
        return south, west, north, east

    def pixel_size_meters(self) -> float:
        """The mean of a pixel's width and height in metres: the CRS's linear unit for projected
        grids; geodesic lengths at the grid's centre for geographic ones."""
        if self._crs.is_projected:
            factor = self._crs.axis_info[0].unit_conversion_factor
            return float((abs(self.transform.a) + abs(self.transform.e)) / 2 * factor)
        row, col = self.height // 2, self.width // 2
        ring = self.footprints([row], [col])[0]
        geod = Geod(ellps="WGS84")
        width = geod.inv(ring[0, 0], ring[0, 1], ring[3, 0], ring[3, 1])[2]   # north edge
        height = geod.inv(ring[0, 0], ring[0, 1], ring[1, 0], ring[1, 1])[2]  # west edge
        return float((width + height) / 2)


def _checked_latlon(lat, lon) -> tuple[float, float]:
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        raise OutsideMosaicError(f"lat {lat!r}, lon {lon!r} are not numbers: give decimal degrees") from None
    if not (math.isfinite(lat) and -90 <= lat <= 90 and math.isfinite(lon) and -180 <= lon <= 180):
        raise OutsideMosaicError(f"lat {lat}, lon {lon} is not a place: lat must be in [-90, 90] and lon in "
                                 "[-180, 180] (decimal degrees, EPSG:4326)")
    return lat, lon
