"""The geo collection's definitions: pixel_store, viewport_preview, the shared index tail, the job and sensor."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.bound import bound_resources
from thumblab_dagster.defs.geo.assets import pixel_store, viewport_preview
from thumblab_dagster.defs.geo.index import geo_index_defs
from thumblab_dagster.defs.geo.sensors import build_viewport, viewport_mosaics
from thumblab_dagster.defs.resources import from_settings
from thumblab_dagster.lib.settings import load_settings


def geo_definitions(resources: dict) -> dg.Definitions:
    """Everything of the geo collection, shaped by what is configured (the upload)."""
    index_assets, index_checks = geo_index_defs(with_upload="index_upload" in resources)
    # Resources put together by hand (tests, tools) may leave geo out: it then takes the environment's settings.
    own = {} if "geo" in resources else {"geo": from_settings("geo", load_settings())}
    return dg.Definitions(assets=[pixel_store, viewport_preview, *index_assets], asset_checks=index_checks,
                          jobs=[build_viewport], sensors=[viewport_mosaics], resources=own)


@dg.definitions
def defs() -> dg.Definitions:
    return geo_definitions(bound_resources())
