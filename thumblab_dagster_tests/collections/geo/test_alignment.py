"""The viewport's blocking check: a corrupted store or an index out of step with the grid is caught."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from thumblab_dagster.lib.collections.geo.alignment import viewport_alignment
from thumblab_dagster.lib.collections.geo.store import EMBEDDINGS_FILE, GridSample, PixelStore
from thumblab_dagster.lib.engine.build import POSITIONS, build_index_dir

FACTORY = "IVF16,PQ8x4"    # compressed (4-bit codes train fast): the check reads codes and stored rows


@pytest.fixture(scope="module")
def viewport(holes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aligned")
    source = holes.store.sample_source()
    queries = source.take(np.arange(0, source.n, source.n // 100))     # 100 tuning queries keep the build short
    build_index_dir(tmp / "index", source, POSITIONS, factory=FACTORY, tune_queries=queries)
    return holes, tmp / "index"


def test_a_fresh_viewport_is_aligned(viewport):
    holes, index_dir = viewport
    report = viewport_alignment(holes.store.directory, index_dir, holes.path)
    assert report.passed, report.problems
    assert report.metrics["sampled_pixels"] == len(holes.store.sample_positions())


def test_a_corrupted_pixel_store_fails(viewport, tmp_path):
    holes, index_dir = viewport
    store_dir = tmp_path / "store"
    shutil.copytree(holes.store.directory, store_dir)
    codes = np.load(store_dir / EMBEDDINGS_FILE, mmap_mode="r+", allow_pickle=False)
    codes[::7] = 255 - codes[::7]
    codes.flush()
    del codes
    report = viewport_alignment(store_dir, index_dir, holes.path)
    assert not report.passed
    assert any("sampled pixels differ from the mosaic" in p for p in report.problems)


def test_an_index_out_of_step_with_the_grid_fails(holes, tmp_path):
    store = PixelStore(holes.store.directory)
    shifted = np.roll(store.sample_positions(), 1)                   # sample j holds pixel(j - 1)
    build_index_dir(tmp_path / "index", GridSample(store, shifted), POSITIONS, factory="Flat")
    report = viewport_alignment(store.directory, tmp_path / "index")
    assert not report.passed
    assert any("are out of step with their pixels" in p for p in report.problems)
    build_index_dir(tmp_path / "short", GridSample(store, store.sample_positions()[:-1]), POSITIONS, factory="Flat")
    assert any("counts differ" in p for p in viewport_alignment(store.directory, tmp_path / "short").problems)
