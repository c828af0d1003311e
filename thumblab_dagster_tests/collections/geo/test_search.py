"""Searching viewports: exact counts, answers as places, nodata never returned, clear refusals,
and the GeoJSON / GeoTIFF / PNG outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image

from thumblab_dagster.lib.collections.geo.search import (
    QueryError,
    knn_search,
    make_query,
    sampled_knn,
    threshold_search,
    write_heatmap_png,
    write_similarity_geotiff,
)
from thumblab_dagster.lib.engine.build import POSITIONS, build_index_dir
from thumblab_dagster.lib.engine.index_dir import load_index_dir
from thumblab_dagster_tests.collections.geo.mosaics import brute_force_cosine, centre_latlon, pixel_order

MOSAICS = ["wgs84", "utm", "holes", "signed", "floats"]


def decoded(built) -> np.ndarray:
    """What the store decodes to, computed here from the GeoTIFF's values (float64)."""
    values = pixel_order(built.values).astype(np.float64)
    if built.values.dtype == np.float32:        # quantised: compare with the store's own decoding
        return built.store.vectors(np.arange(built.store.n)).astype(np.float64)
    return values / 255 if built.values.dtype == np.uint8 else values


def truth(built, query) -> np.ndarray:
    cos = brute_force_cosine(decoded(built), query.vector)
    cos[built.nodata.reshape(-1)] = np.nan
    return cos


def gap_threshold(cos: np.ndarray, rank: int) -> float:
    """A threshold between the rank-th and the next score: no float tie can flip the count."""
    valid = np.sort(cos[~np.isnan(cos)])[::-1]
    return float((valid[rank - 1] + valid[rank]) / 2)


def some_valid_pixel(built, seed=0) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    while True:
        row, col = int(rng.integers(built.store.height)), int(rng.integers(built.store.width))
        if not built.nodata[row, col]:
            return row, col


@pytest.mark.parametrize("name", MOSAICS)
def test_threshold_count_equals_numpy_brute_force(name, request):
    built = request.getfixturevalue(name)
    store = built.store
    row, col = some_valid_pixel(built)
    lat, lon = store.grid.latlon(row, col)
    query = make_query(store, lat=float(lat), lon=float(lon))
    cos = truth(built, query)
    for rank in (1, 37, 500):
        threshold = gap_threshold(cos, rank)
        hits = threshold_search(store, query, threshold, limit=50)
        assert hits.count == int(np.sum(cos >= threshold)) == rank
        assert len(hits.rows) == min(rank, 50)
        assert np.all(np.diff(hits.similarity) <= 0)                       # sorted, best first
        positions = hits.rows * store.width + hits.cols
        np.testing.assert_allclose(hits.similarity, cos[positions], atol=2e-6)
        best = np.sort(cos[~np.isnan(cos)])[::-1][:len(positions)]        # the best ones (near-ties may swap)
        np.testing.assert_allclose(cos[positions], best, atol=2e-6)


@pytest.mark.parametrize("name", MOSAICS)
def test_a_query_pixel_is_in_its_own_result_with_similarity_one(name, request):
    built = request.getfixturevalue(name)
    row, col = some_valid_pixel(built, seed=5)
    lat, lon = built.store.grid.latlon(row, col)
    hits = threshold_search(built.store, make_query(built.store, lat=float(lat), lon=float(lon)), 0.95, limit=10)
    assert (row, col) in set(zip(hits.rows.tolist(), hits.cols.tolist()))
    assert hits.rows[0] == row and hits.cols[0] == col and abs(hits.similarity[0] - 1) < 1e-5
    assert hits.query == {"kind": "point", "lat": float(lat), "lon": float(lon), "row": row, "col": col}


@pytest.mark.parametrize("name", ["wgs84", "utm", "holes"])
def test_every_returned_place_is_rasterios_pixel_centre_reprojected(name, request):
    built = request.getfixturevalue(name)
    query = make_query(built.store, vector=np.random.default_rng(1).uniform(0, 255, 16))
    hits = threshold_search(built.store, query, -1.0, limit=300)
    lat, lon = centre_latlon(built.path, hits.rows, hits.cols)
    np.testing.assert_allclose(hits.lat, lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(hits.lon, lon, rtol=0, atol=1e-9)
    result = hits.to_json()["results"][0]
    assert (result["lat"], result["lon"]) == (float(lat[0]), float(lon[0]))


@pytest.mark.parametrize("name", ["holes", "floats"])
def test_nodata_pixels_are_never_returned(name, request):
    built = request.getfixturevalue(name)
    valid = int((~built.nodata).sum())
    query = make_query(built.store, vector=np.ones(16))
    hits = threshold_search(built.store, query, -1.0, limit=valid)
    assert hits.count == valid == len(hits.rows)                            # every valid pixel, nothing else
    assert not built.nodata[hits.rows, hits.cols].any()
    everything = knn_search(built.store, query, k=valid)
    assert len(everything.rows) == valid and not built.nodata[everything.rows, everything.cols].any()


def test_knn_is_the_exact_top_k(utm):
    query = make_query(utm.store, vector=np.random.default_rng(2).normal(size=16))
    cos = truth(utm, query)
    hits = knn_search(utm.store, query, k=25)
    assert hits.count == utm.store.n and hits.threshold is None
    np.testing.assert_allclose(cos[hits.rows * utm.store.width + hits.cols], np.sort(cos)[::-1][:25], atol=2e-6)


def test_positives_minus_negatives(holes):
    store = holes.store
    points = [store.grid.latlon(*some_valid_pixel(holes, seed)) for seed in (1, 2, 3)]
    positives, negatives = [(float(a), float(b)) for a, b in points[:2]], [{"lat": float(points[2][0]),
                                                                             "lon": float(points[2][1])}]
    query = make_query(store, positives=positives, negatives=negatives)
    vectors = decoded(holes)
    rows_cols = [store.grid.rowcol(*p) for p in positives + [(negatives[0]["lat"], negatives[0]["lon"])]]
    at = [r * store.width + c for r, c in rows_cols]
    np.testing.assert_allclose(query.vector, (vectors[at[0]] + vectors[at[1]]) / 2 - vectors[at[2]], atol=1e-6)
    cos = truth(holes, query)
    threshold = gap_threshold(cos, 120)
    assert threshold_search(store, query, threshold, limit=5).count == 120
    assert query.describe["kind"] == "examples" and len(query.describe["positives"]) == 2


def test_a_vector_query_is_in_the_mosaics_value_space(signed):
    row, col = some_valid_pixel(signed, seed=9)
    values = signed.values[:, row, col].astype(np.float64)                 # the int8 values themselves
    hits = threshold_search(signed.store, make_query(signed.store, vector=values), 0.999999, limit=3)
    assert (hits.rows[0], hits.cols[0]) == (row, col)


def test_bad_queries_are_refused_with_the_reason(holes):
    store = holes.store
    south, west, north, east = store.grid.bounds_latlon
    cases = [
        ({"lat": north + 0.5, "lon": west}, "is outside viewport viewport_holes"),
        ({"lat": 200.0, "lon": 0.0}, "lat must be in"),
        ({"vector": np.ones(17)}, "has 17 values; viewport viewport_holes has 16 bands"),
        ({"vector": np.zeros(16)}, "all zeros"),
        ({"vector": [1.0] * 15 + [float("nan")]}, "NaN"),
        ({}, "give exactly one query"),
        ({"vector": np.ones(16), "lat": 1.0, "lon": 2.0}, "give exactly one query"),
        ({"lat": 1.0}, "needs both lat and lon"),
        ({"positives": [(1.0, 2.0, 3.0)]}, "must be a \\(lat, lon\\) pair"),
    ]
    row, col = 40, 50                                                       # inside the nodata rectangle
    assert holes.nodata[row, col]
    lat, lon = store.grid.latlon(row, col)
    cases.append(({"lat": float(lat), "lon": float(lon)}, "is a nodata pixel of viewport viewport_holes"))
    cases.append(({"positives": [(float(lat), float(lon))]}, "nodata pixel"))
    for kwargs, match in cases:
        with pytest.raises(QueryError, match=match) as caught:
            make_query(store, **kwargs)
        assert "\n" not in str(caught.value)
    query = make_query(store, vector=np.ones(16))
    for threshold, limit, match in [(1.5, 10, "from -1 to 1"), ("high", 10, "must be a number"),
                                    (0.5, -1, "limit must be"), (0.5, 10**9, "limit must be")]:
        with pytest.raises(QueryError, match=match):
            threshold_search(store, query, threshold, limit)


def test_json_and_geojson_outputs(utm):
    store = utm.store
    row, col = some_valid_pixel(utm, seed=4)
    lat, lon = store.grid.latlon(row, col)
    hits = threshold_search(store, make_query(store, lat=float(lat), lon=float(lon)), 0.9, limit=5)
    answer = json.loads(json.dumps(hits.to_json()))
    assert answer["viewport_id"] == "viewport_utm" and answer["count"] == hits.count and answer["returned"] == 5
    assert set(answer["results"][0]) == {"row", "col", "lat", "lon", "similarity"}
    points = json.loads(json.dumps(hits.to_geojson()))
    assert points["type"] == "FeatureCollection" and len(points["features"]) == 5 and points["count"] == hits.count
    first = points["features"][0]
    assert first["geometry"] == {"type": "Point", "coordinates": [float(lon), float(lat)]}
    assert first["properties"]["rank"] == 1 and first["properties"]["row"] == row
    polygons = hits.to_geojson(footprints=True)
    ring = polygons["features"][0]["geometry"]["coordinates"][0]
    assert polygons["features"][0]["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert min(xs) < lon < max(xs) and min(ys) < lat < max(ys)


def test_the_similarity_geotiff_is_on_the_mosaics_grid(tmp_path, holes):
    query = make_query(holes.store, vector=np.random.default_rng(3).uniform(0, 255, 16))
    path = write_similarity_geotiff(holes.store, query, tmp_path / "similarity.tif")
    with rasterio.open(path) as out, rasterio.open(holes.path) as src:
        assert (out.height, out.width, out.count, out.dtypes[0]) == (150, 260, 1, "float32")
        assert out.transform == src.transform and out.crs == src.crs and np.isnan(out.nodata)
        band = out.read(1)
    cos = truth(holes, query).reshape(150, 260)
    assert np.array_equal(np.isnan(band), holes.nodata)
    np.testing.assert_allclose(band[~holes.nodata], cos[~holes.nodata], atol=2e-6)


def test_the_heatmap_png_is_small_and_nodata_is_transparent(tmp_path, holes):
    query = make_query(holes.store, vector=np.ones(16))
    path = write_heatmap_png(holes.store, query, tmp_path / "heat.png", max_side=100)
    with Image.open(path) as picture:
        assert picture.mode == "RGBA" and picture.size == (87, 50)             # every 3rd pixel of 260 x 150
        alpha = np.asarray(picture)[:, :, 3]
    np.testing.assert_array_equal(alpha == 0, holes.nodata[::3, ::3])


def test_knn_through_the_sampled_index_maps_samples_to_pixels(tmp_path, holes):
    store = holes.store
    build_index_dir(tmp_path / "index", store.sample_source(), POSITIONS, factory="Flat")
    index = load_index_dir(tmp_path / "index")
    row, col = some_valid_pixel(holes, seed=6)
    query = make_query(store, vector=store.vectors([row * store.width + col])[0])
    hits = sampled_knn(store, index, query, k=8)
    positions = hits.rows * store.width + hits.cols
    assert set(positions) <= set(store.sample_positions())
    assert np.all(hits.rows % 4 == 0) and np.all(hits.cols % 4 == 0) and not holes.nodata[hits.rows, hits.cols].any()
    cos = truth(holes, query)
    np.testing.assert_allclose(hits.similarity, cos[positions], atol=2e-6)
    sampled = store.sample_positions()
    np.testing.assert_allclose(cos[positions], np.sort(cos[sampled])[::-1][:8], atol=2e-6)   # the sample's best
    assert positions[0] == row * store.width + col or not np.isin(row * store.width + col, sampled)
