"""The thumbnails' jobs (daily_refresh, rebuild_indices) and the 03:00 Australia/Hobart schedule."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.thumbnails.partitions import GROUP

daily_refresh = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.groups(GROUP),
    description="Collect, embed, index, check and publish today's thumbnails for every niche.",
)

# The index tail alone (niche_index, its checks, published_index, index_stats, uploaded_index when
# configured) over the embeddings already on disk: what the service's /internal/rebuild-indices launches.
rebuild_indices = dg.define_asset_job(
    "rebuild_indices",
    selection=dg.AssetSelection.assets("niche_index").downstream(),
    description="Rebuild, check and publish the niches' indices from the embeddings already collected.",
)

# 03:00 Australia/Hobart (the partitions' timezone); each tick requests D|<niche> for all niches.
daily_refresh_schedule = dg.build_schedule_from_partitioned_job(
    daily_refresh, hour_of_day=3, minute_of_hour=0,
    description="Every day at 03:00 Australia/Hobart: that day's trending thumbnails for all five niches "
                "(tech, gaming, education, entertainment, people), embedded, indexed, checked and published.",
)
