"""The viewport's steps without Dagster: the plan's factory rule, settings that skip-if-unchanged compares,
the preview's masked colours, and a mosaic put in the folder under its id."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import rasterio
from PIL import Image

from thumblab_dagster.lib.collections.geo import pipeline
from thumblab_dagster.lib.collections.geo.discovery import UnknownViewportError, discover, find_mosaic, place_mosaic
from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.metadata import read_metadata, unchanged
from thumblab_dagster.lib.collections.geo.preview import write_preview
from thumblab_dagster.lib.engine.choice import choose_index
from thumblab_dagster_tests.collections.geo.conftest import BANDS


def test_the_plan_factory_needs_a_sample_that_can_train_it():
    budget = 2 * 1024**3
    assert pipeline.index_factory("plan", 1_200_000, 128, budget) == "IVF1024,PQ64"
    assert pipeline.index_factory("plan", 39_935, 128, budget) == choose_index(39_935, 128, budget)
    assert pipeline.index_factory("plan", 100_000, 16, budget) == choose_index(100_000, 16, budget)  # PQ64 cannot split 16
    assert pipeline.index_factory("auto", 5_000, 128, budget) == "Flat"
    assert pipeline.index_factory("IVF16,PQ8x4", 5_000, 128, budget) == "IVF16,PQ8x4"


def test_the_settings_a_store_records_are_the_ones_skip_compares(holes, tmp_path):
    settings = pipeline.GeoSettings(expected_bands=BANDS, sampling_factor=3, memory_budget_bytes=2**28)
    layout = GeoLayout.at(tmp_path)
    meta = pipeline.build_store(layout, "viewport_x", holes.path, settings)
    assert unchanged(meta, meta["mosaic_fingerprint"], settings.build_settings())
    assert not unchanged(meta, meta["mosaic_fingerprint"], pipeline.GeoSettings(expected_bands=BANDS).build_settings())
    assert read_metadata(layout.store_dir("viewport_x"))["build_settings"] == settings.build_settings()


def test_the_preview_masks_nodata_and_is_a_cog(holes, tmp_path):
    made = write_preview(holes.store.directory, tmp_path)
    with rasterio.open(made.tif) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.overviews(1) == list(made.overviews)
        assert (cog.height, cog.width, cog.count) == holes.nodata.shape + (3,)
        np.testing.assert_array_equal(cog.dataset_mask() == 0, holes.nodata)
    rgba = np.asarray(Image.open(io.BytesIO(made.png_bytes)))
    assert rgba.shape == holes.nodata.shape + (4,)               # small mosaics are drawn whole
    np.testing.assert_array_equal(rgba[..., 3] == 0, holes.nodata)
    assert made.png.read_bytes() == made.png_bytes and len(np.unique(rgba[~holes.nodata][:, :3], axis=0)) > 100


def test_a_mosaic_is_placed_under_its_id_and_found_again(wgs84, tmp_path):
    folder = tmp_path / "mosaics"
    placed = place_mosaic(folder, wgs84.path, "viewport_here")
    assert placed == folder / "viewport_here.tif" and placed.is_symlink()
    assert place_mosaic(folder, wgs84.path, "viewport_here") == placed       # twice: the same link
    assert find_mosaic(folder, "viewport_here") == placed
    with pytest.raises(UnknownViewportError, match="no mosaic for viewport viewport_gone"):
        find_mosaic(folder, "viewport_gone")
    past = placed.stat().st_mtime - 60
    os.utime(wgs84.path, (past, past))
    found = discover(folder, {})
    assert list(found.mosaics) == ["viewport_here"] and list(found.changed) == ["viewport_here"]
    assert discover(folder, found.cursor).changed == {}
