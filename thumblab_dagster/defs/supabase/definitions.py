"""Supabase contributes nothing unless it is configured (SUPABASE_DB_URL, or SUPABASE_URL + SUPABASE_KEY)."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.bound import bound_resources
from thumblab_dagster.defs.supabase.assets import supabase_defs


@dg.definitions
def defs() -> dg.Definitions:
    if "supabase" not in bound_resources():
        return dg.Definitions()
    assets, checks = supabase_defs()
    return dg.Definitions(assets=assets, asset_checks=checks)
