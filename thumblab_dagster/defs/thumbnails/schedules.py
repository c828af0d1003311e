"""Jobs and schedules."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.thumbnails.assets import GROUP

daily_refresh = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.groups(GROUP),
    description="Collect, embed, index, check and publish today's thumbnails for every niche.",
)

# 03:00 Australia/Hobart (the partitions' timezone); each tick requests D|<niche> for all niches.
daily_refresh_schedule = dg.build_schedule_from_partitioned_job(daily_refresh, hour_of_day=3, minute_of_hour=0)
