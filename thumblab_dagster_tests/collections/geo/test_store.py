"""The pixel store: uint8 in pixel order, the nodata mask, norms, metadata, the grid sample,
one set replaced in one step, and a build that never holds the mosaic in float32."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from thumblab_dagster.lib.collections.geo.metadata import OUR_KEYS, PLAN_KEYS, read_metadata
from thumblab_dagster.lib.collections.geo.mosaic import MosaicError
from thumblab_dagster.lib.collections.geo.store import (
    EMBEDDINGS_FILE,
    FLOAT32_FILE,
    NODATA_FILE,
    NORMS_FILE,
    PixelStore,
    StoreError,
    build_pixel_store,
    grid_positions,
)
from thumblab_dagster_tests.collections.geo.mosaics import (
    UTM_CRS,
    UTM_TRANSFORM,
    embedding_field,
    pixel_order,
    write_mosaic,
)


def test_the_store_holds_every_pixel_as_uint8_in_row_major_order(holes):
    store = holes.store
    codes = np.load(store.directory / EMBEDDINGS_FILE, allow_pickle=False)
    assert codes.dtype == np.uint8 and codes.shape == (150 * 260, 16)
    np.testing.assert_array_equal(codes, pixel_order(holes.values))
    i = 137 * 260 + 201                                    # pixel i is row i // W, column i % W
    np.testing.assert_array_equal(codes[i], holes.values[:, 137, 201])
    mask = np.load(store.directory / NODATA_FILE, allow_pickle=False)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, holes.nodata.reshape(-1))


def test_norms_are_the_decoded_lengths_and_zero_on_nodata(holes):
    store = holes.store
    norms = np.load(store.directory / NORMS_FILE, allow_pickle=False)
    expected = np.linalg.norm(pixel_order(holes.values) / 255.0, axis=1)
    expected[holes.nodata.reshape(-1)] = 0
    np.testing.assert_allclose(norms, expected, rtol=1e-6)


def test_metadata_has_the_plans_keys_and_ours(holes, wgs84):
    metadata = read_metadata(holes.store.directory)
    assert set(metadata) == set(PLAN_KEYS) | set(OUR_KEYS)
    assert metadata["viewport_id"] == "viewport_holes" and metadata["mosaic_file"] == "viewport_holes.tif"
    assert metadata["num_total_pixels"] == 150 * 260 and metadata["embedding_dim"] == 16
    assert (metadata["mosaic_height"], metadata["mosaic_width"]) == (150, 260)
    assert metadata["geotransform"] == [770_000.0, 10.0, 0.0, 1_440_000.0, 0.0, -10.0]
    assert metadata["crs"] == "EPSG:32643" and metadata["pixel_size_meters"] == 10.0
    assert metadata["nodata_pixels"] == int(holes.nodata.sum())
    assert metadata["valid_pixels"] == 150 * 260 - int(holes.nodata.sum())
    assert metadata["storage_dtype"] == "uint8" and metadata["source_dtype"] == "uint8"
    np.testing.assert_allclose(metadata["dequantisation"]["scale"], [1 / 255] * 16, rtol=1e-7)
    assert metadata["dequantisation"]["offset"] == [0.0] * 16
    assert metadata["sampling_factor"] == 4 and metadata["faiss_index_type"] is None
    assert metadata["num_sampled_pixels"] == len(holes.store.sample_positions())
    assert len(metadata["mosaic_fingerprint"]) == 64
    assert 10.8 < read_metadata(wgs84.store.directory)["pixel_size_meters"] < 11.1   # 0.0001 degree near 13 N


def test_grid_sample_is_every_fth_row_and_column_of_valid_pixels(holes):
    store = holes.store
    positions = store.sample_positions()
    rows, cols = np.divmod(positions, store.width)
    assert np.all(rows % 4 == 0) and np.all(cols % 4 == 0)
    assert not holes.nodata[rows, cols].any()
    expected = [(r, c) for r in range(0, 150, 4) for c in range(0, 260, 4) if not holes.nodata[r, c]]
    assert list(zip(rows.tolist(), cols.tolist())) == expected           # sample j <-> its pixel, in order
    source = store.sample_source()
    assert (source.n, source.d) == (len(positions), 16)
    (start, batch), = list(source.batches(len(positions)))
    expected_vectors = holes.values[:, rows, cols].T.astype(np.float64)
    expected_vectors /= np.linalg.norm(expected_vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(batch, expected_vectors, atol=1e-6)
    np.testing.assert_allclose(source.take(np.array([3, 10])), expected_vectors[[3, 10]], atol=1e-6)


def test_grid_positions_by_hand():
    nodata = np.zeros(5 * 7, bool)
    nodata[3 * 7 + 3] = True                                                 # (3, 3) is nodata
    assert grid_positions(5, 7, 3, nodata).tolist() == [0, 3, 6, 21, 27]     # (0,0) (0,3) (0,6) (3,0) (3,6)


def test_int8_and_float32_stores_record_their_decoding(signed, floats):
    int8 = read_metadata(signed.store.directory)["dequantisation"]
    assert int8["kind"] == "int8" and int8["scale"] == [1.0] * 16 and int8["offset"] == [-128.0] * 16
    decoded = signed.store.vectors(np.arange(signed.store.n))
    np.testing.assert_array_equal(decoded, pixel_order(signed.values).astype(np.float32))
    f32 = read_metadata(floats.store.directory)
    assert f32["dequantisation"]["kind"] == "float32" and f32["nodata_pixels"] == int(floats.nodata.sum())


def test_the_float32_copy_is_optional_and_decoded(tmp_path, signed):
    metadata = build_pixel_store(signed.path, tmp_path / "store", expected_bands=16, float32_copy=True)
    assert FLOAT32_FILE in metadata["files"] and metadata["build_settings"]["float32_copy"] is True
    copy = np.load(tmp_path / "store" / FLOAT32_FILE, allow_pickle=False)
    assert copy.dtype == np.float32
    np.testing.assert_array_equal(copy, pixel_order(signed.values).astype(np.float32))
    assert FLOAT32_FILE not in read_metadata(signed.store.directory)["files"]


def test_a_failed_build_leaves_the_previous_store_untouched(tmp_path, signed):
    target = tmp_path / "store"
    build_pixel_store(signed.path, target, expected_bands=16)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in target.iterdir()}
    with pytest.raises(MosaicError, match="bands"):
        build_pixel_store(signed.path, target, expected_bands=128)
    empty = write_mosaic(tmp_path / "empty.tif", np.zeros((16, 20, 20), np.uint8), crs=UTM_CRS,
                         transform=UTM_TRANSFORM, nodata=0)
    with pytest.raises(MosaicError, match="every pixel is nodata"):
        build_pixel_store(empty, target, expected_bands=16)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "store"]   # no staging left behind


def test_progress_reports_every_five_percent_of_rows(tmp_path, utm):
    seen = []
    build_pixel_store(utm.path, tmp_path / "store", expected_bands=16, max_strip_bytes=200 * 16 * 5,
                      progress=lambda stage, message: seen.append((stage, message)))
    reads = [m for s, m in seen if s == "read"]
    percents = [int(m.rsplit("(", 1)[1].rstrip("%)")) for m in reads]
    assert percents[-1] == 100 and len(percents) >= 20
    assert all(b - a <= 5 for a, b in zip([0] + percents, percents))


def test_a_store_whose_files_disagree_with_metadata_is_refused(tmp_path, signed):
    target = tmp_path / "store"
    build_pixel_store(signed.path, target, expected_bands=16)
    np.save(target / NORMS_FILE, np.zeros(7, np.float32))
    with pytest.raises(StoreError, match="norms.npy holds float32 \\(7,\\)"):
        PixelStore(target)
    (target / EMBEDDINGS_FILE).unlink()
    with pytest.raises(StoreError, match="all_embeddings.npy is missing"):
        PixelStore(target)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_building_never_holds_the_mosaic_in_float32(tmp_path, dtype):
    """Peak Python-side allocation (numpy reports to tracemalloc) while building a 512 x 512 x 32 store
    stays far below the float32 mosaic (32 MiB), below even the uint8 one (8 MiB): strips only."""
    values = embedding_field(512, 512, 32, seed=7, cell=64)
    values = np.rint(values).astype(np.uint8) if dtype == "uint8" else (values / 255).astype(np.float32)
    path = write_mosaic(tmp_path / "big.tif", values, crs=UTM_CRS, transform=UTM_TRANSFORM)
    float32_bytes = 512 * 512 * 32 * 4
    del values
    tracemalloc.start()
    try:
        build_pixel_store(path, tmp_path / "store", expected_bands=32, max_strip_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < float32_bytes / 4, f"peak {peak:,} bytes"
