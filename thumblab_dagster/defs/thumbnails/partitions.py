"""Partitions of the thumbnail assets: date (Australia/Hobart) x niche, defined once."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES, TIMEZONE, WINDOW_DAYS

START_DATE = "2026-01-01"
GROUP = "thumbnails"
OWNERS = ["team:thumblab"]
TAGS = {"collection": "thumbnails"}

# end_offset=1: the 03:00 tick on day D targets partition D (D's window is still open then).
date_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone=TIMEZONE, end_offset=1)
niche_partitions = dg.StaticPartitionsDefinition(list(NICHES))
thumbnail_partitions = dg.MultiPartitionsDefinition({"date": date_partitions, "niche": niche_partitions})

# A niche's index on date D reads that niche's embeddings for D-89 .. D. (MultiPartitionMapping
# is beta; defs/__init__.py accepts its warning.)
reference_window_mapping = dg.MultiPartitionMapping({
    "date": dg.DimensionPartitionMapping(
        "date", dg.TimeWindowPartitionMapping(start_offset=-(WINDOW_DAYS - 1), end_offset=0,
                                              allow_nonexistent_upstream_partitions=True)),
    "niche": dg.DimensionPartitionMapping("niche", dg.IdentityPartitionMapping()),
})


def date_and_niche(partition_key: str) -> tuple[str, str]:
    """The one parser of a thumbnail partition key such as ``"2026-11-21|tech"``."""
    keys = thumbnail_partitions.get_partition_key_from_str(str(partition_key)).keys_by_dimension
    return keys["date"], keys["niche"]


def window_dates_for_input(context: dg.AssetExecutionContext, input_name: str) -> list[str]:
    """The upstream dates a mapped input covers, sorted (Dagster hands them over unsorted)."""
    return sorted({date_and_niche(k)[0] for k in context.asset_partition_keys_for_input(input_name)})
