"""The thumbnails' definitions: collecting assets and checks, the shared index tail, job, schedule."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.bound import bound_resources, index_reads_store
from thumblab_dagster.defs.thumbnails.assets import thumbnail_embeddings, trending_videos
from thumblab_dagster.defs.thumbnails.checks import collecting_checks
from thumblab_dagster.defs.thumbnails.index import thumbnail_index_defs
from thumblab_dagster.defs.thumbnails.schedules import daily_refresh, daily_refresh_schedule, rebuild_indices

SUPABASE_TABLE_ASSET = "supabase_ref_thumbnails"


def index_definitions(resources: dict) -> dg.Definitions:
    """The index tail, shaped by what is configured (the rest of the folder autoloads as it is)."""
    # Built from Supabase's table, the index waits for the table to be filled first.
    extra = [dg.AssetKey(SUPABASE_TABLE_ASSET)] if index_reads_store(resources) else []
    index_assets, index_checks = thumbnail_index_defs(extra, with_upload="index_upload" in resources)
    return dg.Definitions(assets=index_assets, asset_checks=index_checks)


def thumbnail_definitions(resources: dict) -> dg.Definitions:
    """Everything of the thumbnails collection, for materialising it without the other folders."""
    return dg.Definitions.merge(
        dg.Definitions(assets=[trending_videos, thumbnail_embeddings], asset_checks=collecting_checks,
                       jobs=[daily_refresh, rebuild_indices], schedules=[daily_refresh_schedule]),
        index_definitions(resources))


@dg.definitions
def defs() -> dg.Definitions:
    return index_definitions(bound_resources())
