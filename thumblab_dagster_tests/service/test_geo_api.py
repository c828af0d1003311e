"""``POST /api/faiss/search`` and ``GET /api/faiss/viewports`` through a real uvicorn server on loopback,
over a viewport built and published from a GeoTIFF this test writes (UTM, with a nodata region), in a
publish folder with no thumbnail niche: exact counts, places as rasterio and pyproj put them, GeoJSON,
and every refusal as one line that never repeats what was sent."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.pipeline import GeoSettings, build_viewport
from thumblab_dagster.lib.collections.thumbnails.niches import NICHES
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.collections.geo.conftest import nodata_region
from thumblab_dagster_tests.collections.geo.mosaics import (
    UTM_CRS,
    UTM_TRANSFORM,
    brute_force_cosine,
    centre_latlon,
    embedding_field,
    pixel_order,
    write_mosaic,
)
from thumblab_dagster_tests.service.server import serving

BANDS = 16
HEIGHT, WIDTH = 120, 160
VIEWPORT = "viewport_api"
SETTINGS = GeoSettings(expected_bands=BANDS)
NODATA_PIXEL = (40, 50)                      # inside nodata_region's rectangle


def mosaic_values(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bands, height, width) uint8 values with nodata 0 over ``nodata_region``, and that region."""
    values = np.rint(embedding_field(HEIGHT, WIDTH, BANDS, seed=seed)).astype(np.uint8)
    mask = nodata_region(HEIGHT, WIDTH)
    values[:, mask] = 0
    return values, mask


def publish(layout: GeoLayout, seed: int) -> tuple[os.PathLike, np.ndarray, np.ndarray]:
    values, mask = mosaic_values(seed)
    path = write_mosaic(layout.mosaic_link(VIEWPORT), values, crs=UTM_CRS, transform=UTM_TRANSFORM, nodata=0)
    result = build_viewport(layout, path, SETTINGS, preview=False)
    assert result.published["published"], result
    return path, values, mask


@pytest.fixture(scope="module")
def geo(tmp_path_factory, clip):
    """The viewport published under pub/ (and a link there that leads outside it), the service over pub/."""
    root = tmp_path_factory.mktemp("geo_api")
    layout = GeoLayout.at(root / "data", publish_dir=root / "pub", mosaic_dir=root / "mosaics")
    layout.mosaic_dir.mkdir(parents=True)
    path, values, mask = publish(layout, seed=7)
    os.symlink(layout.store_dir(VIEWPORT), layout.published / "escaped")   # has a metadata.json, but outside pub/
    (layout.published / "viewport_broken").mkdir()
    (layout.published / "viewport_broken" / "metadata.json").write_text("{}")   # published by nothing we know
    with serving(create_app(ServiceSettings(publish_dir=str(layout.published)), clip=clip)) as base:
        yield base, path, values, mask


def search(base: str, body) -> requests.Response:
    if isinstance(body, str):   # raw JSON (NaN is not JSON requests will send)
        return requests.post(f"{base}/api/faiss/search", data=body, headers={"Content-Type": "application/json"},
                             timeout=60)
    return requests.post(f"{base}/api/faiss/search", json=body, timeout=60)


def truth(values: np.ndarray, mask: np.ndarray, query: np.ndarray) -> np.ndarray:
    cos = brute_force_cosine(pixel_order(values), query)
    cos[mask.reshape(-1)] = np.nan
    return cos


def gap_threshold(cos: np.ndarray, rank: int) -> float:
    """Halfway between the rank-th and the next similarity: no float rounding can flip the count."""
    ranked = np.sort(cos[~np.isnan(cos)])[::-1]
    return float((ranked[rank - 1] + ranked[rank]) / 2)


def place(path, row: int, col: int) -> tuple[float, float]:
    lat, lon = centre_latlon(path, [row], [col])
    return float(lat[0]), float(lon[0])


def test_a_place_query_counts_exactly_and_finds_its_own_pixel_first(geo):
    base, path, values, mask = geo
    row, col = 90, 130
    lat, lon = place(path, row, col)
    cos = truth(values, mask, values[:, row, col])
    threshold = gap_threshold(cos, 40)
    resp = search(base, {"viewport_id": VIEWPORT, "threshold": threshold, "limit": 25, "query": {"lat": lat, "lon": lon}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == int(np.sum(cos >= threshold)) == 40 and body["returned"] == 25 == len(body["results"])
    assert body["viewport_id"] == VIEWPORT and body["version"].startswith("v000001-") and body["threshold"] == threshold
    first = body["results"][0]
    assert (first["row"], first["col"], first["similarity"]) == (row, col, 1.0)
    assert body["query"] == {"kind": "point", "lat": lat, "lon": lon, "row": row, "col": col}
    rows = np.array([r["row"] for r in body["results"]])
    cols = np.array([r["col"] for r in body["results"]])
    similarity = np.array([r["similarity"] for r in body["results"]])
    assert np.all(np.diff(similarity) <= 0) and not mask[rows, cols].any()
    np.testing.assert_allclose(similarity, cos[rows * WIDTH + cols], atol=2e-6)
    lats, lons = centre_latlon(path, rows, cols)                 # rasterio's centres, reprojected by pyproj
    np.testing.assert_allclose([r["lat"] for r in body["results"]], lats, rtol=0, atol=1e-9)
    np.testing.assert_allclose([r["lon"] for r in body["results"]], lons, rtol=0, atol=1e-9)


def test_geojson_points_and_footprints_are_the_json_hits(geo):
    base, path, _, _ = geo
    lat, lon = place(path, 100, 20)
    body = {"viewport_id": VIEWPORT, "threshold": 0.9, "limit": 12, "query": {"lat": lat, "lon": lon}}
    hits = search(base, body).json()
    resp = search(base, {**body, "format": "geojson"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/geo+json"
    collection = json.loads(resp.text)
    assert collection["type"] == "FeatureCollection" and collection["count"] == hits["count"] > 12
    assert collection["version"] == hits["version"] and len(collection["features"]) == 12
    assert [f["geometry"]["coordinates"] for f in collection["features"]] == [[h["lon"], h["lat"]] for h in hits["results"]]
    assert [f["geometry"]["type"] for f in collection["features"]] == ["Point"] * 12
    assert [f["properties"]["rank"] for f in collection["features"]] == list(range(1, 13))
    outlines = search(base, {**body, "format": "geojson", "footprints": True}).json()
    for feature, hit in zip(outlines["features"], hits["results"], strict=True):
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert ring[:, 0].min() < hit["lon"] < ring[:, 0].max() and ring[:, 1].min() < hit["lat"] < ring[:, 1].max()


def test_vector_and_example_queries_count_exactly(geo):
    base, path, values, mask = geo
    vector = values[:, 10, 150].astype(float) * 0.5 + 3.0          # any vector in the mosaic's value space
    cos = truth(values, mask, vector / 255)
    threshold = gap_threshold(cos, 333)
    body = search(base, {"viewport_id": VIEWPORT, "threshold": threshold, "limit": 0,
                         "query": {"vector": (vector / 255).tolist()}}).json()
    assert (body["count"], body["returned"], body["query"]) == (333, 0, {"kind": "vector"})

    positives, negative = [(100, 10), (110, 140)], (5, 80)
    query = values[:, [p[0] for p in positives], [p[1] for p in positives]].mean(axis=1) - values[:, negative[0], negative[1]]
    cos = truth(values, mask, query.astype(float))
    threshold = gap_threshold(cos, 120)
    body = search(base, {"viewport_id": VIEWPORT, "threshold": threshold, "limit": 3,
                         "query": {"positives": [place(path, *p) for p in positives],
                                   "negatives": [place(path, *negative)]}}).json()
    assert body["count"] == 120 and body["query"]["kind"] == "examples"
    assert [(p["row"], p["col"]) for p in body["query"]["positives"]] == positives


def refusal(resp: requests.Response, status: int, *sent) -> str:
    """The one-line reason of a refusal, checked to repeat none of the values ``sent``."""
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    reason = detail if isinstance(detail, str) else " | ".join(f"{e['field']}: {e['msg']}" for e in detail)
    assert "\n" not in reason
    for value in sent:
        forms = {str(value)} | ({f"{value:.6f}", f"{value:.4f}", repr(value)} if isinstance(value, float) else set())
        for form in forms:
            assert form not in resp.text, (form, resp.text)
    return reason


def test_an_unknown_or_escaping_viewport_is_a_404(geo):
    base = geo[0]
    for viewport_id in ("viewport_nowhere_42", "escaped"):
        resp = search(base, {"viewport_id": viewport_id, "threshold": 0.9, "query": {"vector": [1.0] * BANDS}})
        assert "unknown viewport" in refusal(resp, 404, viewport_id)
    for unsafe in ("../pub", "a..b", "x/y"):
        resp = search(base, {"viewport_id": unsafe, "threshold": 0.9, "query": {"vector": [1.0] * BANDS}})
        assert refusal(resp, 422, unsafe).startswith("viewport_id: ")


def test_a_broken_published_set_is_a_503_that_names_no_path(geo):
    base = geo[0]
    resp = search(base, {"viewport_id": "viewport_broken", "threshold": 0.9, "query": {"vector": [1.0] * BANDS}})
    assert "cannot be read: rebuild it" in refusal(resp, 503, "viewport_broken", "metadata.json", "/")


def test_places_off_the_mosaic_or_on_nodata_are_a_422_with_the_reason(geo):
    base, path, values, mask = geo
    assert mask[NODATA_PIXEL]
    bounds = requests.get(f"{base}/api/faiss/viewports", timeout=30).json()["viewports"][0]["bounds"]
    north_of_it = (bounds["north"] + 0.0123, (bounds["west"] + bounds["east"]) / 2)
    nodata = place(path, *NODATA_PIXEL)
    inside = place(path, 100, 20)
    cases = [({"lat": north_of_it[0], "lon": north_of_it[1]}, "query: the place is outside the viewport", north_of_it),
             ({"lat": nodata[0], "lon": nodata[1]}, "query: the place is on a nodata pixel", nodata),
             ({"positives": [inside, north_of_it]}, "query.positives.1: the place is outside", north_of_it),
             ({"positives": [inside], "negatives": [nodata]}, "query.negatives.0: the place is on a nodata", nodata)]
    for query, reason, sent in cases:
        resp = search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "query": query})
        assert refusal(resp, 422, *sent).startswith(reason)
    # the refusal says where the viewport is
    assert f"{bounds['north']:.6f}" in search(base, {"viewport_id": VIEWPORT, "threshold": 0.9,
                                                     "query": cases[0][0]}).text


def test_wrong_vectors_thresholds_and_query_forms_are_a_422(geo):
    base, path, _, _ = geo
    lat, lon = place(path, 100, 20)
    wrong = [123.456789] * 5
    resp = search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "query": {"vector": wrong}})
    assert refusal(resp, 422, 123.456789) == \
        f"query.vector: has 5 values but the viewport has {BANDS} bands: give one value per band"
    for threshold in (1.734, -2.718):
        resp = search(base, {"viewport_id": VIEWPORT, "threshold": threshold, "query": {"lat": lat, "lon": lon}})
        assert refusal(resp, 422, threshold).startswith("threshold: Input should be")
    nan_last = "[" + "1.0, " * (BANDS - 1) + "NaN]"      # NaN is not JSON, but Python's parser takes it
    resp = search(base, json.dumps({"viewport_id": VIEWPORT, "threshold": 0.9, "query": {"vector": "V"}}).replace(
        '"V"', nan_last))
    assert refusal(resp, 422).startswith(f"query.vector.{BANDS - 1}: Input should be a finite number")
    for query in ({"lat": lat, "lon": lon, "vector": [1.0] * BANDS}, {"lat": lat}, {}, {"negatives": [[lat, lon]]}):
        resp = search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "query": query})
        assert refusal(resp, 422, lat).startswith("query: ")
    same = {"positives": [[lat, lon]], "negatives": [[lat, lon]]}   # no direction left to compare with
    assert "all zeros" in refusal(search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "query": same}), 422, lat)
    for limit in (-1, 10_001):
        resp = search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "limit": limit, "query": {"lat": lat, "lon": lon}})
        assert refusal(resp, 422, limit).startswith("limit: ")


def test_viewports_lists_the_published_viewport_with_its_metadata(geo):
    base, path, values, mask = geo
    resp = requests.get(f"{base}/api/faiss/viewports", timeout=30)
    assert resp.status_code == 200
    (info,) = resp.json()["viewports"]      # not "escaped" (it leads outside the publish folder) nor "viewport_broken"
    assert info["viewport_id"] == VIEWPORT and info["version"].startswith("v000001-")
    assert (info["mosaic_height"], info["mosaic_width"], info["embedding_dim"]) == (HEIGHT, WIDTH, BANDS)
    assert info["num_total_pixels"] == HEIGHT * WIDTH and info["nodata_pixels"] == int(mask.sum())
    assert info["valid_pixels"] == HEIGHT * WIDTH - int(mask.sum()) and info["crs"] == UTM_CRS
    assert info["mosaic_file"] == f"{VIEWPORT}.tif" and info["storage_dtype"] == "uint8"
    assert info["geotransform"] == list(UTM_TRANSFORM.to_gdal()) and info["pixel_size_meters"] == 10.0
    lat, lon = place(path, 0, 0)
    bounds = info["bounds"]
    assert bounds["south"] < lat < bounds["north"] and bounds["west"] < lon < bounds["east"]


def test_searches_are_counted_in_metrics_and_the_docs_know_the_paths(geo):
    base, path, _, _ = geo
    lat, lon = place(path, 100, 20)
    assert search(base, {"viewport_id": VIEWPORT, "threshold": 0.9, "query": {"lat": lat, "lon": lon}}).ok
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(requests.get(f"{base}/metrics", timeout=30).text)
               for s in family.samples}
    assert samples[("thumblab_search_duration_seconds_count", frozenset({("operation", "geo_threshold")}))] >= 1
    route = frozenset({("method", "POST"), ("route", "/api/faiss/search"), ("status", "200")})
    assert samples[("thumblab_http_requests_total", route)] >= 1
    schema = requests.get(f"{base}/openapi.json", timeout=30).json()
    post = schema["paths"]["/api/faiss/search"]["post"]
    assert set(post["requestBody"]["content"]["application/json"]["examples"]) == {"place", "examples", "vector",
                                                                                 "geojson"}
    assert {"200", "404", "422"} <= set(post["responses"]) and "/api/faiss/viewports" in schema["paths"]
    health = requests.get(f"{base}/health", timeout=30)             # no niche published: the service still serves
    assert health.status_code == 200 and not any(health.json()["niches"][n]["exists"] for n in NICHES)
    assert set(health.json()["niches"]) == set(NICHES)  # a viewport published beside them is not a niche


def test_a_new_publish_is_served_by_the_next_search(tmp_path, clip):
    layout = GeoLayout.at(tmp_path / "data", publish_dir=tmp_path / "pub", mosaic_dir=tmp_path / "mosaics")
    layout.mosaic_dir.mkdir(parents=True)
    path, values, mask = publish(layout, seed=11)
    lat, lon = place(path, 90, 130)
    with serving(create_app(ServiceSettings(publish_dir=str(layout.published)), clip=clip)) as base:
        body = {"viewport_id": VIEWPORT, "threshold": 0.95, "limit": 1, "query": {"lat": lat, "lon": lon}}
        before = search(base, body).json()
        assert before["count"] == int(np.nansum(truth(values, mask, values[:, 90, 130]) >= 0.95))
        _, values, mask = publish(layout, seed=12)           # a changed mosaic: rebuilt and published
        after = search(base, body).json()
    assert before["version"].startswith("v000001-") and after["version"].startswith("v000002-")
    assert after["count"] == int(np.nansum(truth(values, mask, values[:, 90, 130]) >= 0.95)) != before["count"]
