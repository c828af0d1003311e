"""Searching a viewport: every valid pixel scored exactly, answers as places.

    store = PixelStore(directory)
    query = make_query(store, lat=13.0, lon=77.55)          # or vector=..., or positives=[(lat, lon), ...]
    hits = threshold_search(store, query, threshold=0.9, limit=100)
    hits.to_json(); hits.to_geojson(footprints=True)
    write_similarity_geotiff(store, query, "similarity.tif"); write_heatmap_png(store, query, "heat.png")

A query lives in the mosaic's value space (``x = code * scale + offset``, metadata.json's
``dequantisation``): a vector of ``bands`` numbers, a lat/lon (that pixel's decoded vector), or
positives and optional negatives (mean of the positives' vectors minus mean of the negatives').
For uint8 mosaics the values are taken as ``x / 255``; cosine does not change with that scale.

Similarity is the cosine of the decoded vectors, computed for *every* pixel by the engine's
``CosineScan`` (float32, so within about 1e-6 of the float64 value); nodata pixels never appear.
The threshold ``count`` is exact; ``limit`` caps the pixels returned, best first (ties: lower row,
then lower column). ``knn_search`` is the same scan without a threshold. ``sampled_knn`` asks the
sampled index (approximate candidates, exact re-rank by the engine) and maps samples to pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from thumblab_dagster.lib.collections.geo.coords import OutsideMosaicError
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.lib.engine.files import atomic_path
from thumblab_dagster.lib.engine.scan import ScanResult

DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000           # results carry coordinates: a bigger answer belongs in the similarity GeoTIFF
MAP_ROWS_PIXELS = 1 << 20     # pixels scored per strip when writing whole-grid maps
HEATMAP_MAX_SIDE = 1024


class QueryError(ValueError):
    """A query the viewport cannot answer: wrong length, a place off the mosaic or on nodata."""


@dataclass(frozen=True, eq=False)
class Query:
    """A query vector in the mosaic's value space and how it was asked (JSON-able)."""

    vector: np.ndarray
    describe: dict = field(default_factory=dict)


def pixel_at(store: PixelStore, lat: float, lon: float) -> tuple[int, int]:
    """The valid pixel under a lat/lon; off the mosaic or on nodata is a ``QueryError``."""
    try:
        row, col = store.grid.rowcol(lat, lon)
    except OutsideMosaicError as exc:
        raise QueryError(str(exc)) from None
    if store.nodata[store.position(row, col)]:
        raise QueryError(f"lat {float(lat):.6f}, lon {float(lon):.6f} (row {row}, col {col}) is a nodata pixel of "
                         f"viewport {store.viewport_id}: pick a point with data")
    return row, col


def _points(store: PixelStore, points, what: str) -> list[dict]:
    out = []
    for point in points or []:
        if isinstance(point, dict):
            lat, lon = point.get("lat"), point.get("lon")
        else:
            try:
                lat, lon = point
            except (TypeError, ValueError):
                raise QueryError(f"each of the {what} must be a (lat, lon) pair or {{\"lat\", \"lon\"}}, got {point!r}") from None
        row, col = pixel_at(store, lat, lon)
        out.append({"lat": float(lat), "lon": float(lon), "row": row, "col": col})
    return out


def make_query(store: PixelStore, *, vector=None, lat=None, lon=None, positives=None, negatives=None) -> Query:
    """Exactly one form: ``vector``; ``lat`` and ``lon``; or ``positives`` (and optional ``negatives``)."""
    forms = [vector is not None, lat is not None or lon is not None, bool(positives)]
    if sum(forms) != 1 or (negatives and not positives):
        raise QueryError("give exactly one query: a vector, a lat and lon, or positives (with optional negatives)")
    if vector is not None:
        try:
            values = np.asarray(vector, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise QueryError("the query vector must be a list of numbers") from None
        if values.size != store.bands:
            raise QueryError(f"the query vector has {values.size} values; viewport {store.viewport_id} has "
                             f"{store.bands} bands: give one value per band")
        return _checked(Query(values, {"kind": "vector"}))
    if positives is None:
        if lat is None or lon is None:
            raise QueryError("a place query needs both lat and lon")
        row, col = pixel_at(store, lat, lon)
        vector = store.vectors([store.position(row, col)])[0].astype(np.float64)
        return _checked(Query(vector, {"kind": "point", "lat": float(lat), "lon": float(lon), "row": row, "col": col}))
    pos, neg = _points(store, positives, "positives"), _points(store, negatives, "negatives")
    vector = _mean(store, pos) - (_mean(store, neg) if neg else 0.0)
    return _checked(Query(vector, {"kind": "examples", "positives": pos, "negatives": neg}))


def _mean(store: PixelStore, points: list[dict]) -> np.ndarray:
    positions = [store.position(p["row"], p["col"]) for p in points]
    return store.vectors(positions).astype(np.float64).mean(axis=0)


def _checked(query: Query) -> Query:
    if not np.all(np.isfinite(query.vector)):
        raise QueryError("the query vector holds NaN or infinite values")
    if not np.any(query.vector):
        raise QueryError("the query vector is all zeros (positives equal to the negatives?): cosine is undefined")
    return query


# --- answers -------------------------------------------------------------------------------

@dataclass
class PixelHits:
    """A search's answer: the exact ``count`` and the returned pixels, best first."""

    viewport_id: str
    query: dict
    threshold: float | None
    limit: int
    count: int
    rows: np.ndarray
    cols: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    similarity: np.ndarray
    store: PixelStore = field(repr=False)

    def results(self) -> list[dict]:
        return [{"row": int(r), "col": int(c), "lat": float(la), "lon": float(lo), "similarity": round(float(s), 6)}
                for r, c, la, lo, s in zip(self.rows, self.cols, self.lat, self.lon, self.similarity)]

    def to_json(self) -> dict:
        return {"viewport_id": self.viewport_id, "query": self.query, "threshold": self.threshold,
                "limit": self.limit, "count": self.count, "returned": len(self.rows), "results": self.results()}

    def to_geojson(self, footprints: bool = False) -> dict:
        """A FeatureCollection in EPSG:4326: pixel centres as points, or pixel outlines as polygons;
        ``count`` and ``threshold`` ride along as foreign members (RFC 7946, 6.1)."""
        rings = self.store.grid.footprints(self.rows, self.cols) if footprints and len(self.rows) else None
        features = []
        for i, result in enumerate(self.results()):
            geometry = ({"type": "Polygon", "coordinates": [rings[i].tolist()]} if rings is not None
                        else {"type": "Point", "coordinates": [result["lon"], result["lat"]]})
            features.append({"type": "Feature", "geometry": geometry, "properties": {"rank": i + 1, **result}})
        return {"type": "FeatureCollection", "viewport_id": self.viewport_id, "threshold": self.threshold,
                "count": self.count, "features": features}


def _hits(store: PixelStore, query: Query, found: ScanResult, threshold: float | None, limit: int) -> PixelHits:
    rows, cols = np.divmod(found.rows, store.width)
    lat, lon = store.grid.latlon(rows, cols)
    return PixelHits(store.viewport_id, query.describe, threshold, limit, found.count, rows, cols,
                     np.atleast_1d(lat), np.atleast_1d(lon), found.scores, store)


def _limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 0 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 0 to {MAX_LIMIT:,}, got {limit!r}")
    return int(limit)


def threshold_search(store: PixelStore, query: Query, threshold: float, limit: int = DEFAULT_LIMIT) -> PixelHits:
    """Every valid pixel with cosine >= ``threshold``: the exact count and the best ``limit``."""
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise QueryError(f"threshold must be a number from -1 to 1, got {threshold!r}") from None
    if not (math.isfinite(threshold) and -1 <= threshold <= 1):
        raise QueryError(f"threshold must be a cosine similarity from -1 to 1, got {threshold}")
    limit = _limit(limit)
    return _hits(store, query, store.scan.search(query.vector, threshold, limit), threshold, limit)


def knn_search(store: PixelStore, query: Query, k: int = 10) -> PixelHits:
    """The exact k most similar valid pixels (``count``: the valid pixels scanned)."""
    k = _limit(k)
    return _hits(store, query, store.scan.search(query.vector, None, k), None, k)


def sampled_knn(store: PixelStore, index, query: Query, k: int = 10) -> PixelHits:
    """k-NN through the sampled index (an engine ``LoadedIndex`` built on ``store.sample_source()``):
    its candidates re-ranked exactly by the engine, mapped to pixels by the sample grid."""
    k = _limit(k)
    positions = store.sample_positions()
    if index.ntotal != len(positions):
        raise QueryError(f"the sampled index holds {index.ntotal:,} vectors but viewport {store.viewport_id}'s grid "
                         f"sample has {len(positions):,}: rebuild the index")
    q = query.vector.astype(np.float32)[None, :]
    q /= np.linalg.norm(q)
    scores, labels = index.search(q, k) if k else (np.empty((1, 0), np.float32), np.empty((1, 0), np.int64))
    keep = labels[0] >= 0
    found = ScanResult(int(index.ntotal), positions[labels[0][keep]], np.clip(scores[0][keep], -1, 1))
    return _hits(store, query, found, None, k)


# --- whole-grid outputs --------------------------------------------------------------------

def similarity_strips(store: PixelStore, query: Query, rows_per_strip: int | None = None):
    """``(row0, (rows, width) float32 cosines)`` over the whole grid; nodata is NaN."""
    rows_per_strip = rows_per_strip or max(1, MAP_ROWS_PIXELS // store.width)
    for row0 in range(0, store.height, rows_per_strip):
        row1 = min(row0 + rows_per_strip, store.height)
        scores = store.scan.scores(query.vector, row0 * store.width, row1 * store.width)
        yield row0, scores.reshape(row1 - row0, store.width)


def write_similarity_geotiff(store: PixelStore, query: Query, path: str | os.PathLike) -> Path:
    """A float32 GeoTIFF on the mosaic's grid (same transform and CRS): each pixel's cosine, NaN nodata."""
    path = Path(path)
    profile = {"driver": "GTiff", "height": store.height, "width": store.width, "count": 1, "dtype": "float32",
               "crs": store.grid.crs, "transform": store.grid.transform, "nodata": float("nan"),
               "compress": "deflate", "predictor": 3,
               **({"tiled": True, "blockxsize": 256, "blockysize": 256}
                  if store.height >= 256 and store.width >= 256 else {})}
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for row0, scores in similarity_strips(store, query, _tile_rows(store.width)):
                window = Window(0, row0, store.width, len(scores))
                dst.write(scores, 1, window=window)
    return path


def _tile_rows(width: int) -> int:
    """Strip height for the GeoTIFF writer: whole 256-row tiles, about ``MAP_ROWS_PIXELS`` a strip."""
    return max(256, MAP_ROWS_PIXELS // width // 256 * 256)


def write_heatmap_png(store: PixelStore, query: Query, path: str | os.PathLike, max_side: int = HEATMAP_MAX_SIDE,
                      vmin: float | None = None, vmax: float | None = None, colormap: str = "viridis") -> Path:
    """A PNG of the similarity map (every ``step``-th pixel so the longer side is <= ``max_side``),
    coloured from ``vmin`` (default: the 2nd percentile) to ``vmax`` (default: the maximum);
    nodata is transparent."""
    from matplotlib import colormaps  # imported here: only pictures need it
    from PIL import Image

    step = max(1, math.ceil(max(store.height, store.width) / max_side))
    parts = []
    rows_per_strip = step * max(1, MAP_ROWS_PIXELS // (store.width * step))   # a multiple of step: strips keep the stride
    for _, scores in similarity_strips(store, query, rows_per_strip):
        parts.append(scores[::step, ::step])
    picture = np.concatenate(parts)
    valid = np.isfinite(picture)
    if not valid.any():
        raise QueryError(f"viewport {store.viewport_id} has no valid pixel to draw")
    low = float(np.percentile(picture[valid], 2)) if vmin is None else vmin
    high = float(picture[valid].max()) if vmax is None else vmax
    scaled = np.clip((picture - low) / ((high - low) or 1.0), 0, 1)
    rgba = (colormaps[colormap](np.where(valid, scaled, 0)) * 255).astype(np.uint8)
    rgba[~valid, 3] = 0
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")
    return path
