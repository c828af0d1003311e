"""Partitions of the thumbnail assets: date (Australia/Hobart) x niche, defined once."""

from __future__ import annotations

from datetime import date

import dagster as dg

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES, TIMEZONE, WINDOW_DAYS
from thumblab_dagster.lib.settings import SETTING, load_settings


def partitions_start(environ=None) -> str:
    """THUMBLAB_PARTITIONS_START (a recent date by default: with the live API only today can be
    filled, so the UI should not offer a year of empty partitions). A bad value: one SettingsError line."""
    start = load_settings(environ).partitions_start
    try:
        date.fromisoformat(start)
    except ValueError:
        raise SETTING["partitions_start"].error(start, "not a calendar date") from None
    return start


START_DATE = partitions_start()  # read once, when the code location loads
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
