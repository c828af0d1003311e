"""Published viewports as the service and the CLI open them: resolved inside the publish folder, opened once a version."""

from __future__ import annotations

import os

import pytest

from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.pipeline import GeoSettings, build_viewport
from thumblab_dagster.lib.collections.geo.published import NotPublished, ViewportCache, open_published, published_ids
from thumblab_dagster_tests.collections.geo.conftest import BANDS

VIEWPORT = "viewport_holes"


def test_a_viewport_is_opened_once_a_version_and_only_inside_the_publish_folder(holes, tmp_path):
    layout = GeoLayout.at(tmp_path / "data", publish_dir=tmp_path / "pub")
    build_viewport(layout, holes.path, GeoSettings(expected_bands=BANDS), preview=False)
    cache = ViewportCache(layout.published)
    first = cache.get(VIEWPORT)
    assert cache.get(VIEWPORT) is first and (cache.loads, cache.hits) == (1, 1)
    assert first.version == os.path.basename(os.path.realpath(layout.viewport(VIEWPORT))) == cache.cached()[VIEWPORT]
    assert first.store.n == holes.store.n and open_published(layout.published, VIEWPORT).version == first.version

    os.symlink(layout.store_dir(VIEWPORT), layout.published / "elsewhere")   # a metadata.json, outside pub/
    assert published_ids(layout.published) == ["elsewhere", VIEWPORT]
    with pytest.raises(NotPublished, match="leads outside"):
        open_published(layout.published, "elsewhere")
    for missing in ("elsewhere", "viewport_none"):
        with pytest.raises(NotPublished, match="nothing is published as"):
            cache.get(missing)
    for unsafe in ("../pub", "a..b"):
        with pytest.raises(ValueError, match="not a safe name"):
            cache.get(unsafe)
