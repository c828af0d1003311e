"""What every geo asset, check and sensor starts from: the layout, the build settings, the viewport."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from thumblab_dagster.lib.collections.geo.discovery import UnknownViewportError, find_mosaic
from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.pipeline import GeoSettings


def where(context) -> tuple[GeoLayout, str, GeoSettings]:
    """(layout, viewport id, build settings) of an asset's or a check's partition."""
    resources = context.resources
    return (resources.geo.layout(resources.storage), context.partition_key,
            resources.geo.settings(resources.index_engine))


def mosaic_of(layout: GeoLayout, viewport_id: str) -> Path:
    """The viewport's mosaic; none is a Failure with the one line (retrying cannot help)."""
    try:
        return find_mosaic(layout.mosaic_dir, viewport_id)
    except UnknownViewportError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
