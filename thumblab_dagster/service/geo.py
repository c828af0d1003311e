"""The geo endpoints: every pixel of a published viewport searchable, answers as places (issue 13).

``POST /api/faiss/search`` (the plan's phase 2 path): an exact threshold search over every valid
pixel of a viewport (``lib/collections/geo/search.py``): the exact count and the best ``limit``
pixels, as JSON or a GeoJSON FeatureCollection. ``GET /api/faiss/viewports``: the published
viewports and their metadata.json essentials.

Viewports are read from the publish folder (``THUMBLAB_PUBLISH_DIR``, the thumbnails' own):
``<publish_dir>/<viewport_id>/``, opened once a version (``ViewportCache``). Errors are one line and
never carry a value the caller sent: an unknown viewport is a 404; a place off the mosaic or on a
nodata pixel, a vector whose length is not the band count, a threshold outside [-1, 1] are 422s in
the house's format (the field's path and a message, as every other 422).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from thumblab_dagster.lib.collections.geo.coords import OutsideMosaicError
from thumblab_dagster.lib.collections.geo.metadata import VIEWPORT_ID, check_viewport_id
from thumblab_dagster.lib.collections.geo.published import NotPublished, OpenViewport, ViewportCache, published_ids
from thumblab_dagster.lib.collections.geo.search import QueryError, make_query, threshold_search
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.service.guard import ValidationErrors, text

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000          # pixels returned, each with its coordinates; the count is exact whatever the limit
MAX_BANDS = 4096            # THUMBLAB_GEO_BANDS' own bound
MAX_EXAMPLES = 256          # positives (and negatives) a query may name
SEARCH_OPERATION = "geo_threshold"
GEOJSON_MEDIA_TYPE = "application/geo+json"

# `thumblab geo demo`'s viewport and its centre pixel: the examples answer on a machine that ran it
EXAMPLE_VIEWPORT = "viewport_demo"
EXAMPLE_LAT, EXAMPLE_LON = 13.02495, 77.57005

ViewportId = text(min_length=1, max_length=128, pattern=f"^{VIEWPORT_ID.pattern}$")
Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
Value = Annotated[float, Field(allow_inf_nan=False)]


# --- the wire format (this is also the OpenAPI schema) -------------------------------------

class GeoQuery(BaseModel):
    """Exactly one form: a place (``lat`` and ``lon``), a ``vector``, or ``positives`` (and optional ``negatives``)."""

    model_config = ConfigDict(extra="forbid")

    lat: Lat | None = Field(default=None, description="Latitude of the query pixel (EPSG:4326), with lon.")
    lon: Lon | None = Field(default=None, description="Longitude of the query pixel (EPSG:4326), with lat.")
    vector: list[Value] | None = Field(default=None, min_length=1, max_length=MAX_BANDS,
                                       description="A query vector in the mosaic's values, one number per band.")
    positives: list[tuple[Lat, Lon]] | None = Field(
        default=None, min_length=1, max_length=MAX_EXAMPLES,
        description="[lat, lon] places whose pixels look like what you want: the query is their mean vector...")
    negatives: list[tuple[Lat, Lon]] | None = Field(
        default=None, max_length=MAX_EXAMPLES,
        description="... minus the mean of these places' vectors (pixels agree less with a difference than with "
                    "a pixel: use a lower threshold).")

    @model_validator(mode="after")
    def _one_form(self) -> GeoQuery:
        forms = [self.lat is not None or self.lon is not None, self.vector is not None, self.positives is not None]
        if sum(forms) != 1 or (self.negatives is not None and self.positives is None):
            raise ValueError("give exactly one query: {lat, lon}, {vector} or {positives, negatives}")
        if forms[0] and (self.lat is None or self.lon is None):
            raise ValueError("a place query needs both lat and lon")
        return self


class SearchRequest(BaseModel):
    viewport_id: ViewportId = Field(description="A published viewport (GET /api/faiss/viewports lists them).",
                                    examples=[EXAMPLE_VIEWPORT])
    threshold: float = Field(ge=-1, le=1, allow_inf_nan=False, examples=[0.97],
                             description="Cosine similarity from -1 to 1: every valid pixel at least this similar counts.")
    query: GeoQuery
    limit: int = Field(default=100, ge=0, le=MAX_LIMIT,
                       description="How many of the matching pixels to return, best first (the count is always exact).")
    format: Literal["json", "geojson"] = Field(default="json", description="geojson: a FeatureCollection "
                                               f"({GEOJSON_MEDIA_TYPE}) of the returned pixels, EPSG:4326.")
    footprints: bool = Field(default=False, description="GeoJSON only: pixel outlines (polygons) instead of centres.")


SEARCH_EXAMPLES = {
    "place": {"summary": "Pixels like the one at a place",
              "value": {"viewport_id": EXAMPLE_VIEWPORT, "threshold": 0.97, "limit": 5,
                        "query": {"lat": EXAMPLE_LAT, "lon": EXAMPLE_LON}}},
    "examples": {"summary": "Like these places, unlike that one (a difference: lower similarities)",
                 "value": {"viewport_id": EXAMPLE_VIEWPORT, "threshold": 0.3, "limit": 5,
                           "query": {"positives": [[EXAMPLE_LAT, EXAMPLE_LON], [13.02625, 77.57045]],
                                     "negatives": [[13.03505, 77.55505]]}}},
    "vector": {"summary": "A vector (one number per band)",
               "value": {"viewport_id": EXAMPLE_VIEWPORT, "threshold": 0.9, "limit": 5,
                         "query": {"vector": [0.5] * 128}}},
    "geojson": {"summary": "The answer as GeoJSON points",
                "value": {"viewport_id": EXAMPLE_VIEWPORT, "threshold": 0.97, "limit": 5, "format": "geojson",
                          "query": {"lat": EXAMPLE_LAT, "lon": EXAMPLE_LON}}},
}


class PixelHit(BaseModel):
    row: int
    col: int
    lat: float = Field(description="The pixel centre's latitude (EPSG:4326).")
    lon: float
    similarity: float = Field(description="Cosine similarity with the query.")


class SearchResponse(BaseModel):
    viewport_id: str
    version: str = Field(description="The published version that answered (every part of the answer is from it).")
    query: dict = Field(description="How the query was asked: its kind, and each place's row and column.")
    threshold: float
    limit: int
    count: int = Field(description="Exactly how many valid pixels have similarity >= threshold.")
    returned: int
    results: list[PixelHit] = Field(description="The best `limit` of them, best first (ties: lower row, then column).")
    search_ms: float


class Bounds(BaseModel):
    south: float
    west: float
    north: float
    east: float


class ViewportInfo(BaseModel):
    """metadata.json's essentials (its key names) and the version they are from."""

    viewport_id: str
    version: str
    mosaic_file: str
    mosaic_height: int
    mosaic_width: int
    embedding_dim: int
    num_total_pixels: int
    valid_pixels: int
    nodata_pixels: int
    num_sampled_pixels: int
    sampling_factor: int
    pixel_size_meters: float
    geotransform: list[float] = Field(description="GDAL order: (c, a, b, f, d, e).")
    crs: str
    faiss_index_type: str | None
    source_dtype: str
    storage_dtype: str
    mosaic_fingerprint: str
    bounds: Bounds = Field(description="The mosaic's extent in EPSG:4326.")


class Viewports(BaseModel):
    viewports: list[ViewportInfo]


def _info(opened: OpenViewport) -> ViewportInfo:
    meta = opened.store.metadata
    south, west, north, east = opened.store.grid.bounds_latlon
    keys = set(ViewportInfo.model_fields) - {"viewport_id", "version", "bounds"}
    return ViewportInfo(viewport_id=opened.viewport_id, version=opened.version,
                        bounds=Bounds(south=south, west=west, north=north, east=east),
                        **{key: meta[key] for key in keys})


# --- answers and refusals ---------------------------------------------------------------------

UNKNOWN_VIEWPORT = "unknown viewport: nothing is published under that id (GET /api/faiss/viewports lists them)"
UNREADABLE_VIEWPORT = "the viewport's published files cannot be read: rebuild it (the service log names the problem)"


def invalid(loc: tuple, message: str, kind: str) -> RequestValidationError:
    """A 422 in the house's format (``validation_error``): the field's path under the body and a message."""
    return RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": kind}])


def _locate(store: PixelStore, lat: float, lon: float, loc: tuple) -> None:
    """Refuse a place off the mosaic or on nodata, saying why without repeating it."""
    try:
        row, col = store.grid.rowcol(lat, lon)
    except OutsideMosaicError:
        south, west, north, east = store.grid.bounds_latlon
        raise invalid(loc, f"the place is outside the viewport, which covers lat {south:.6f} to {north:.6f} and lon "
                           f"{west:.6f} to {east:.6f}: pick a point inside", "outside_viewport") from None
    if store.nodata[store.position(row, col)]:
        raise invalid(loc, "the place is on a nodata pixel of the viewport: pick a point with data", "nodata_pixel")


def _query(store: PixelStore, asked: GeoQuery):
    """The library's query for the request, every place checked first (the library's own messages
    repeat the coordinates; these do not)."""
    if asked.vector is not None:
        if len(asked.vector) != store.bands:
            raise invalid(("query", "vector"), f"has {len(asked.vector)} values but the viewport has {store.bands} "
                                               "bands: give one value per band", "vector_length")
        return make_query(store, vector=asked.vector)
    if asked.positives is None:
        _locate(store, asked.lat, asked.lon, ("query",))
        return make_query(store, lat=asked.lat, lon=asked.lon)
    for what, places in (("positives", asked.positives), ("negatives", asked.negatives or [])):
        for i, (lat, lon) in enumerate(places):
            _locate(store, lat, lon, ("query", what, i))
    return make_query(store, positives=asked.positives, negatives=asked.negatives or None)


def geo_router(publish_dir: str | os.PathLike, on_search: Callable[[str, float], None] | None = None) -> APIRouter:
    """The geo endpoints over ``publish_dir``; ``on_search(operation, seconds)`` times each search (/metrics)."""
    cache = ViewportCache(publish_dir)
    router = APIRouter(tags=["geo"])

    def viewport(viewport_id: str) -> OpenViewport:
        try:
            check_viewport_id(viewport_id)          # the schema's pattern lets "a..b" through
        except ValueError:
            raise invalid(("viewport_id",), "is not a safe name: letters, digits, '.', '_' and '-', no '..'",
                          "viewport_id") from None
        try:
            return cache.get(viewport_id)
        except NotPublished:
            raise HTTPException(status_code=404, detail=UNKNOWN_VIEWPORT) from None
        except ValueError as exc:   # a broken published set (StoreError, MetadataError): the log says which
            log.error("viewport %s cannot be opened: %s", viewport_id, exc)
            raise HTTPException(status_code=503, detail=UNREADABLE_VIEWPORT) from None

    @router.post("/api/faiss/search", response_model=SearchResponse,
                 summary="Every pixel of a viewport like a place's, a vector or examples (exact threshold search)",
                 responses={200: {"content": {GEOJSON_MEDIA_TYPE: {"schema": {"type": "object"}}},
                                  "description": "JSON (SearchResponse), or with format geojson a FeatureCollection "
                                                 "of the returned pixels with count and threshold as members."},
                            404: {"description": "No viewport is published under that id."},
                            413: {"description": "The body is over THUMBLAB_MAX_BODY_BYTES."},
                            422: {"model": ValidationErrors, "description": "The body does not match the schema, a "
                                  "place is off the mosaic or on nodata, or the vector's length is not the band "
                                  "count: the field's path and why (never the value sent)."},
                            503: {"description": "The viewport's published files cannot be read."}})
    def search(request: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)]):
        opened = viewport(request.viewport_id)
        try:
            query = _query(opened.store, request.query)
            started = time.perf_counter()
            hits = threshold_search(opened.store, query, request.threshold, request.limit)
            seconds = time.perf_counter() - started
        except QueryError as exc:    # e.g. positives equal to the negatives: no direction to compare with
            raise invalid(("query",), str(exc), "query_invalid") from None
        if on_search is not None:
            on_search(SEARCH_OPERATION, seconds)
        if request.format == "geojson":
            return JSONResponse({**hits.to_geojson(footprints=request.footprints), "version": opened.version},
                                media_type=GEOJSON_MEDIA_TYPE)
        return SearchResponse(**hits.to_json(), version=opened.version, search_ms=round(seconds * 1000, 3))

    @router.get("/api/faiss/viewports", response_model=Viewports, summary="Published viewports and their metadata")
    def viewports() -> Viewports:
        found = []
        for viewport_id in published_ids(publish_dir):
            try:
                found.append(_info(cache.get(viewport_id)))
            except (NotPublished, ValueError, KeyError) as exc:   # unpublished meanwhile, or broken: not listed
                log.warning("viewport %s not listed: %s", viewport_id, exc)
        return Viewports(viewports=found)

    return router
