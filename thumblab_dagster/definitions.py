"""The one place that assembles the code location's Definitions.

Supabase's table (``supabase_ref_thumbnails`` + its check) joins only when Supabase is
configured, the index upload (``uploaded_index``) only when an upload URL is; without them the
definitions are the embedded default. Both are in the thumbnails group, so they run in
``daily_refresh`` when present.
"""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.resources import resources_from_env
from thumblab_dagster.defs.supabase.assets import supabase_mirror_in_sync, supabase_ref_thumbnails, uploaded_index
from thumblab_dagster.defs.thumbnails.assets import niche_index_asset, thumbnail_assets
from thumblab_dagster.defs.thumbnails.checks import thumbnail_checks
from thumblab_dagster.defs.thumbnails.schedules import daily_refresh, daily_refresh_schedule


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    resources = resources if resources is not None else resources_from_env()
    assets, checks = list(thumbnail_assets), list(thumbnail_checks)
    if "supabase" in resources:
        assets.append(supabase_ref_thumbnails)
        checks.append(supabase_mirror_in_sync)
    engine = resources.get("index_engine")
    if engine is not None and engine.source == "supabase":
        # the index reads the table, so the table is filled first
        assets = [niche_index_asset(extra_deps=[supabase_ref_thumbnails]) if a.key.path == ["niche_index"] else a
                  for a in assets]
    if "index_upload" in resources:
        assets.append(uploaded_index)
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[daily_refresh],
                          schedules=[daily_refresh_schedule], resources=resources)


defs = build_definitions()
