"""Reading mosaics: validation errors a user can act on, strips of uint8 codes, the nodata rule."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from affine import Affine

from thumblab_dagster.lib.collections.geo.mosaic import MosaicError, code_scale, fingerprint, open_mosaic, read_strips
from thumblab_dagster_tests.collections.geo.mosaics import (
    UTM_CRS,
    UTM_TRANSFORM,
    embedding_field,
    pixel_order,
    write_mosaic,
)

SMALL = np.rint(embedding_field(40, 30, 8, seed=9)).astype(np.uint8)


def _error(path, **kwargs) -> str:
    with pytest.raises(MosaicError) as caught:
        open_mosaic(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_a_valid_mosaic_is_described_in_gdal_order(utm):
    mosaic = open_mosaic(utm.path, expected_bands=16)
    assert (mosaic.height, mosaic.width, mosaic.bands, mosaic.dtype) == (300, 200, 16, "uint8")
    assert mosaic.crs == "EPSG:32643"
    assert mosaic.geotransform == [770_000.0, 10.0, 0.0, 1_440_000.0, 0.0, -10.0]   # (c, a, b, f, d, e)


def test_bad_band_count_names_the_file_and_the_count(utm):
    assert "16 bands, expected 128" in _error(utm.path)
    assert open_mosaic(utm.path, expected_bands=None).bands == 16   # any count >= 1 when asked


@pytest.mark.parametrize("dtype", ["int16", "float64", "uint16"])
def test_unsupported_band_types_are_refused(tmp_path, dtype):
    path = write_mosaic(tmp_path / "m.tif", SMALL.astype(dtype), crs=UTM_CRS, transform=UTM_TRANSFORM)
    assert f"bands are {dtype}" in _error(path, expected_bands=None)


def test_a_mosaic_without_crs_is_refused(tmp_path):
    path = write_mosaic(tmp_path / "m.tif", SMALL, crs=None, transform=UTM_TRANSFORM)
    assert "has no CRS" in _error(path, expected_bands=None)


def test_rotated_and_south_up_transforms_are_refused(tmp_path):
    rotated = write_mosaic(tmp_path / "r.tif", SMALL, crs=UTM_CRS, transform=UTM_TRANSFORM @ Affine.rotation(10))
    assert "rotated or sheared" in _error(rotated, expected_bands=None)
    south_up = write_mosaic(tmp_path / "s.tif", SMALL, crs=UTM_CRS,
                            transform=Affine(10, 0, 770_000, 0, 10, 1_440_000))
    assert "not north-up" in _error(south_up, expected_bands=None)


def test_missing_and_unreadable_files(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.tif")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a tiff")
    assert "not a raster" in _error(junk)


def test_strips_are_uint8_in_pixel_order_and_never_the_whole_mosaic(utm):
    mosaic = open_mosaic(utm.path, expected_bands=16)
    strips = list(read_strips(mosaic, code_scale(mosaic), max_bytes=64 * 1024))
    assert len(strips) > 1 and all(s.rows < mosaic.height for s in strips)
    assert all(s.codes.dtype == np.uint8 and s.codes.shape == (s.rows * mosaic.width, 16) for s in strips)
    assert [s.row0 for s in strips] == list(np.cumsum([0] + [s.rows for s in strips[:-1]]))
    np.testing.assert_array_equal(np.concatenate([s.codes for s in strips]), pixel_order(utm.values))


def test_strips_hold_at_most_a_twentieth_of_the_rows_so_progress_moves_every_5_percent(utm):
    mosaic = open_mosaic(utm.path, expected_bands=16)
    assert mosaic.block_height == 64 and mosaic.height == 300
    assert mosaic.strip_rows(64 * 200 * 16 * 3) == 15 and mosaic.strip_rows(1000) == 1


def test_nodata_is_all_bands_equal_to_the_nodata_value(holes):
    mosaic = open_mosaic(holes.path, expected_bands=16)
    nodata = np.concatenate([s.nodata for s in read_strips(mosaic, code_scale(mosaic))])
    np.testing.assert_array_equal(nodata, holes.nodata.reshape(-1))
    assert not nodata.reshape(150, 260)[100:110, 200:210].any()   # some bands 0 is still data


def test_the_per_dataset_mask_marks_nodata(tmp_path):
    mask = np.ones((40, 30), bool)
    mask[5:9, 3:20] = False
    path = write_mosaic(tmp_path / "masked.tif", SMALL, crs=UTM_CRS, transform=UTM_TRANSFORM, mask=mask)
    mosaic = open_mosaic(path, expected_bands=None)
    assert mosaic.per_dataset_mask
    nodata = np.concatenate([s.nodata for s in read_strips(mosaic, code_scale(mosaic))])
    np.testing.assert_array_equal(nodata, ~mask.reshape(-1))


def test_int8_is_stored_plus_128_and_decodes_exactly(signed):
    mosaic = open_mosaic(signed.path, expected_bands=16)
    scale = code_scale(mosaic)
    codes = np.concatenate([s.codes for s in read_strips(mosaic, scale)])
    expected = pixel_order(signed.values)
    np.testing.assert_array_equal(codes, (expected.astype(np.int16) + 128).astype(np.uint8))
    np.testing.assert_array_equal(scale.decode(codes), expected.astype(np.float32))


def test_float32_is_quantised_per_dimension_within_half_a_step(floats):
    mosaic = open_mosaic(floats.path, expected_bands=16)
    scale = code_scale(mosaic)
    strips = list(read_strips(mosaic, scale))
    nodata = np.concatenate([s.nodata for s in strips])
    np.testing.assert_array_equal(nodata, floats.nodata.reshape(-1))
    decoded = scale.decode(np.concatenate([s.codes for s in strips]))[~nodata]
    original = pixel_order(floats.values)[~nodata]
    assert np.all(np.abs(decoded - original) <= scale.scale / 2 + 1e-6)
    np.testing.assert_allclose(scale.offset, original.min(axis=0), rtol=0, atol=1e-7)


def test_fingerprint_is_the_sha256_of_the_file_bytes(wgs84):
    assert fingerprint(wgs84.path) == hashlib.sha256(wgs84.path.read_bytes()).hexdigest()


def test_an_all_nodata_float_mosaic_is_refused(tmp_path):
    values = np.full((4, 10, 10), np.nan, np.float32)
    path = write_mosaic(tmp_path / "empty.tif", values, crs=UTM_CRS, transform=UTM_TRANSFORM, nodata=float("nan"))
    with pytest.raises(MosaicError, match="every pixel is nodata"):
        code_scale(open_mosaic(path, expected_bands=None))
