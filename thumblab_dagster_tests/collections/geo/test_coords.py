"""Pixels to places and back: centres (+0.5), reprojection to EPSG:4326, points off the mosaic."""

from __future__ import annotations

import numpy as np
import pytest

from thumblab_dagster.lib.collections.geo.coords import GeoGrid, OutsideMosaicError
from thumblab_dagster_tests.collections.geo.mosaics import UTM_CRS, UTM_TRANSFORM, WGS84_TRANSFORM, centre_latlon

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("crs, transform, name", [("EPSG:4326", WGS84_TRANSFORM, "wgs84"), (UTM_CRS, UTM_TRANSFORM, "utm")])
def test_pixel_centres_match_rasterio_reprojected_with_pyproj(crs, transform, name, request):
    built = request.getfixturevalue(name)
    grid = built.store.grid
    rows, cols = RNG.integers(0, grid.height, 50), RNG.integers(0, grid.width, 50)
    lat, lon = grid.latlon(rows, cols)
    want_lat, want_lon = centre_latlon(built.path, rows, cols)
    np.testing.assert_allclose(lat, want_lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lon, want_lon, rtol=0, atol=1e-9)
    for r, c, la, lo in zip(rows, cols, lat, lon):                 # and back to the same pixel
        assert grid.rowcol(la, lo) == (r, c)


def test_a_utm_grid_is_really_reprojected():
    grid = GeoGrid(300, 200, UTM_TRANSFORM, UTM_CRS)
    lat, lon = grid.latlon([0], [0])
    assert 12.9 < lat[0] < 13.1 and 77.4 < lon[0] < 77.6          # zone 43N: 270 km east of its meridian 75 E
    assert grid.pixel_size_meters() == 10.0


def test_corners_belong_to_the_pixel_right_and_below():
    grid = GeoGrid(10, 10, WGS84_TRANSFORM, "EPSG:4326")
    lon, lat = WGS84_TRANSFORM @ (3, 4)                              # the corner shared by 4 pixels
    assert grid.rowcol(lat, lon) == (4, 3)


def test_points_off_the_mosaic_are_refused_in_one_line(utm):
    grid = utm.store.grid
    south, west, north, east = grid.bounds_latlon
    for lat, lon in [(north + 0.01, (west + east) / 2), (south - 0.01, west), ((south + north) / 2, east + 0.01)]:
        with pytest.raises(OutsideMosaicError, match="is outside viewport viewport_utm .*pick a point inside") as caught:
            grid.rowcol(lat, lon)
        assert "\n" not in str(caught.value)
    with pytest.raises(OutsideMosaicError, match="lat must be in"):
        grid.rowcol(95, 77)
    with pytest.raises(OutsideMosaicError, match="not numbers"):
        grid.rowcol("north", 77)


def test_footprints_are_closed_counter_clockwise_rings_around_the_centre(utm):
    grid = utm.store.grid
    rings = grid.footprints([5, 120], [7, 33])
    assert rings.shape == (2, 5, 2)
    lat, lon = grid.latlon([5, 120], [7, 33])
    for ring, la, lo in zip(rings, lat, lon):
        assert tuple(ring[0]) == tuple(ring[-1])
        x, y = ring[:, 0], ring[:, 1]
        assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0          # shoelace: counter-clockwise
        assert x.min() < lo < x.max() and y.min() < la < y.max()
