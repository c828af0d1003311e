"""The one place that assembles the code location's Definitions."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.assets.thumbnails import thumbnail_assets
from thumblab_dagster.checks import thumbnail_checks
from thumblab_dagster.jobs import daily_refresh, daily_refresh_schedule
from thumblab_dagster.resources import resources_from_env


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=thumbnail_assets,
        asset_checks=thumbnail_checks,
        jobs=[daily_refresh],
        schedules=[daily_refresh_schedule],
        resources=resources if resources is not None else resources_from_env(),
    )


defs = build_definitions()
