"""The geo assets through the build_viewport job (in-process): a viewport is read, indexed, checked and
published as one set; an unchanged mosaic is left alone, file mtimes and all; a changed one is rebuilt."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import rasterio

from thumblab_dagster.lib.collections.geo.metadata import OUR_KEYS, PLAN_KEYS
from thumblab_dagster.lib.collections.geo.pipeline import PUBLISHED_LAYOUT
from thumblab_dagster.lib.collections.geo.search import make_query, threshold_search
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.lib.engine.index_dir import checksum_problems, read_manifest
from thumblab_dagster.lib.engine.publish import load_published
from thumblab_dagster_tests.defs.geo.conftest import (
    BANDS,
    HEIGHT,
    WIDTH,
    check_results,
    log_messages,
    materialized,
    observations,
)

VIEWPORT = "viewport_a"
PUBLISHED_FILES = {"embeddings.index", "all_embeddings.npy", "nodata_mask.npy", "norms.npy", "metadata.json",
                   "manifest.json"}
EVERY_ASSET = {"pixel_store", "pixel_index", "published_viewport", "viewport_stats", "viewport_preview"}


def published_tree(geo) -> dict[str, int]:
    """Every file (and link) under the published root and the viewport's data-root folders -> its mtime_ns."""
    roots = [geo.layout.published, geo.layout.store_dir(VIEWPORT), geo.layout.index_dir(VIEWPORT),
             geo.layout.preview_dir(VIEWPORT)]
    return {str(p): p.lstat().st_mtime_ns for root in roots for p in [root, *root.rglob("*")]}


def test_a_viewport_is_read_indexed_checked_and_published_as_one_set(geo_module):
    geo = geo_module
    geo.mosaic(VIEWPORT, seed=1)
    result = geo.run(VIEWPORT)
    assert result.success
    assert materialized(result) == EVERY_ASSET
    checks = check_results(result)
    assert checks["pixel_index:id_map_alignment"].passed and checks["pixel_index:index_recall"].passed

    viewport = geo.layout.viewport(VIEWPORT)
    assert viewport.is_symlink() and {p.name for p in viewport.iterdir()} == PUBLISHED_FILES
    manifest = read_manifest(viewport)
    assert checksum_problems(viewport, manifest) == []                       # one complete, verified set
    loaded = load_published(geo.layout.published, VIEWPORT, layout=PUBLISHED_LAYOUT)
    metadata = json.loads((viewport / "metadata.json").read_text())
    assert set(PLAN_KEYS) | set(OUR_KEYS) <= set(metadata)
    assert metadata["faiss_index_type"] == manifest.factory and metadata["num_sampled_pixels"] == loaded.ntotal
    assert (metadata["mosaic_height"], metadata["mosaic_width"], metadata["embedding_dim"]) == (HEIGHT, WIDTH, BANDS)
    store = PixelStore(viewport)
    hits = threshold_search(store, make_query(store, vector=store.vectors([1234])[0]), 0.99, limit=5)
    assert (int(hits.rows[0]), int(hits.cols[0])) == divmod(1234, WIDTH) and hits.similarity[0] > 0.9999

    [store_event] = result.asset_materializations_for_node("pixel_store")
    meta = {k: v.value for k, v in store_event.metadata.items()}
    assert meta["pixels"] == HEIGHT * WIDTH and meta["nodata_pixels"] == 0 and meta["dtype"].startswith("uint8")
    assert meta["bytes"] >= HEIGHT * WIDTH * BANDS and len(meta["fingerprint"]) == 64
    [preview] = result.asset_materializations_for_node("viewport_preview")
    picture = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", preview.metadata["preview"].value).group(1)
    assert base64.b64decode(picture).startswith(b"\x89PNG")
    with rasterio.open(geo.layout.preview_dir(VIEWPORT) / "preview.tif") as cog:
        assert cog.count == 3 and cog.overviews(1) == [2, 4]
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.crs == store.grid.crs

    lines = log_messages(geo.instance, result)
    def percents(pattern: str) -> list[int]:
        return [int(m.group(1)) for m in (re.search(pattern, line or "") for line in lines) if m]

    # progress reached the run's event log at least every 5% of pixels read and of vectors added
    for pattern in (r"read: [\d,]+ / [\d,]+ rows .*\((\d+)%\)", r"added [\d,]+ / [\d,]+ vectors \((\d+)%\)"):
        steps = percents(pattern)
        assert steps and steps[-1] == 100 and max(b - a for a, b in zip([0] + steps, steps)) <= 5, (pattern, steps)


def test_an_unchanged_mosaic_is_not_rebuilt_and_no_file_is_touched(geo_module):
    geo = geo_module
    before = published_tree(geo)
    result = geo.run(VIEWPORT)
    assert result.success and materialized(result) == set()
    assert "is unchanged" in observations(result)["pixel_store"]["reason"]
    assert any("is unchanged" in (line or "") for line in log_messages(geo.instance, result))
    assert published_tree(geo) == before


def test_the_index_alone_is_not_rebuilt_either(geo_module):
    geo = geo_module
    before = published_tree(geo)
    result = geo.run(VIEWPORT, asset_selection=[_key(n) for n in ("pixel_index", "published_viewport",
                                                                   "viewport_stats")])
    assert result.success and materialized(result) == set() and check_results(result) == {}
    assert "is unchanged" in observations(result)["pixel_index"]["reason"]       # the shared tail's skip
    assert published_tree(geo) == before


def test_a_changed_mosaic_is_rebuilt_and_published_as_a_new_version(geo_module):
    geo = geo_module
    old = read_manifest(geo.layout.viewport(VIEWPORT))
    geo.mosaic(VIEWPORT, seed=2)
    result = geo.run(VIEWPORT)
    assert result.success and materialized(result) == EVERY_ASSET
    new = read_manifest(geo.layout.viewport(VIEWPORT))
    assert new.mosaic_fingerprint != old.mosaic_fingerprint
    assert geo.layout.viewport(VIEWPORT).resolve().name.startswith("v000002-")
    assert np.load(geo.layout.viewport(VIEWPORT) / "all_embeddings.npy").shape == (HEIGHT * WIDTH, BANDS)


def test_a_corrupted_store_fails_the_blocking_check_and_nothing_is_published(geo):
    geo.mosaic("viewport_b", seed=3)
    first = geo.run("viewport_b", asset_selection=[_key("pixel_store")])
    assert first.success and materialized(first) == {"pixel_store"}
    codes = np.load(geo.layout.store_dir("viewport_b") / "all_embeddings.npy", mmap_mode="r+")
    codes[::7] = 255 - codes[::7]                                 # corrupted on disk after it was written
    codes.flush()
    del codes
    result = geo.run("viewport_b", asset_selection=[_key(n) for n in ("pixel_index", "published_viewport",
                                                                       "viewport_stats")])
    alignment = check_results(result)["pixel_index:id_map_alignment"]
    assert not alignment.passed
    assert "sampled pixels differ from the mosaic" in alignment.metadata["problems"].value
    assert "published_viewport" not in materialized(result)
    assert not geo.layout.viewport("viewport_b").exists() and not (geo.layout.published / ".versions" / "viewport_b").exists()


def test_a_failing_preview_does_not_stop_the_viewport(geo, monkeypatch):
    from thumblab_dagster.lib.collections.geo import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("the preview's disk is full")

    monkeypatch.setattr(pipeline, "build_preview", broken)
    geo.mosaic("viewport_c", seed=4)
    result = geo.run("viewport_c")
    assert not result.success                                      # the run says the preview failed ...
    assert materialized(result) == EVERY_ASSET - {"viewport_preview"}   # ... and the viewport is published
    assert (geo.layout.viewport("viewport_c") / "embeddings.index").exists()


def _key(name: str):
    import dagster as dg

    return dg.AssetKey(name)
