from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from thumblab_dagster.definitions import build_definitions
from thumblab_dagster.lib.collections.thumbnails.niches import NICHES

defs = build_definitions()

HOBART = ZoneInfo("Australia/Hobart")


def schedule():
    return defs.resolve_schedule_def("daily_refresh_schedule")


def test_daily_at_three_in_hobart():
    s = schedule()
    assert s.cron_schedule == "0 3 * * *"
    assert s.execution_timezone == "Australia/Hobart"
    assert s.job_name == "daily_refresh"


@pytest.mark.parametrize("day", [
    "2026-11-21",
    "2026-10-04",  # DST starts in Hobart: 02:00 -> 03:00
    "2026-10-05",
    "2027-04-04",  # DST ends: 03:00 -> 02:00, so 02:00-03:00 happens twice
    "2027-04-05",
])
def test_tick_requests_that_days_partition_for_every_niche(day):
    when = datetime.fromisoformat(f"{day}T03:00:00").replace(tzinfo=HOBART)
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        result = schedule().evaluate_tick(context)
    keys = sorted(r.partition_key for r in result.run_requests)
    assert keys == sorted(f"{day}|{niche}" for niche in NICHES)


def test_partitions_are_date_by_niche_in_hobart():
    job = defs.resolve_job_def("daily_refresh")
    pdef = job.partitions_def
    assert isinstance(pdef, dg.MultiPartitionsDefinition)
    dims = {d.name: d.partitions_def for d in pdef.partitions_defs}
    assert dims["niche"].get_partition_keys() == list(NICHES)
    assert dims["date"].timezone == "Australia/Hobart"
