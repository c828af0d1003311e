"""Only real charts: the live API fills today's date (plus the grace for late runs), older dates
reuse their trending file or fail at once; the sample source backfills freely. Loopback YouTube."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from thumblab_dagster.defs.thumbnails.partitions import START_DATE, date_partitions, partitions_start
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import SourceSettings, collect_trending
from thumblab_dagster.lib.collections.thumbnails.trending import (
    ChartUnavailableError,
    LiveWindow,
    recorded_source,
    today_in,
)
from thumblab_dagster.lib.settings import SETTING, SettingsError, load_settings
from thumblab_dagster_tests.conftest import TEST_KEY

TODAY, YESTERDAY, OLD, TOMORROW = "2026-11-20", "2026-11-19", "2026-11-10", "2026-11-21"
REFUSED = f"YouTube's chart is only available for today ({TODAY} in Australia/Hobart); {OLD} can't be collected now"


def live(youtube, **kw) -> SourceSettings:
    return SourceSettings(api_key=TEST_KEY, base_url=youtube.base_url, max_results=12, backoff_factor=0.0,
                          **{"today": TODAY, **kw})


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
def layout(tmp_path):
    return DataLayout.at(tmp_path / "data")


def test_the_live_window_is_today_and_the_grace_days():
    window = LiveWindow(TODAY, grace_days=1)
    assert TODAY in window and YESTERDAY in window
    assert OLD not in window and TOMORROW not in window and "2026-11-18" not in window
    assert YESTERDAY not in LiveWindow(TODAY, grace_days=0)
    assert LiveWindow.now().today == today_in("Australia/Hobart")


@pytest.mark.parametrize("date", [OLD, TOMORROW])
def test_a_date_the_live_chart_cannot_fill_fails_at_once_and_writes_nothing(youtube, layout, date):
    youtube.add_videos("28", "tech", 5)
    with pytest.raises(ChartUnavailableError) as refused:
        collect_trending(layout, "tech", date, live(youtube))
    line = str(refused.value)
    assert line.startswith(REFUSED.replace(OLD, date)) and "\n" not in line
    assert "THUMBLAB_LIVE_GRACE_DAYS=1" in line and f"back to {YESTERDAY}" in line
    assert youtube.requests == []             # no API call
    assert files_under(layout.root) == []     # no file touched


def test_today_and_a_late_run_for_yesterday_collect(youtube, layout):
    youtube.add_videos("28", "tech", 5)
    for date in (TODAY, YESTERDAY):
        outcome = collect_trending(layout, "tech", date, live(youtube))
        assert (outcome.source, outcome.rows, outcome.reused) == ("youtube", 5, False)
        assert recorded_source(layout.trending("tech", date)) == "youtube"
    assert len(youtube.requests) == 2
    with pytest.raises(ChartUnavailableError):  # no grace: yesterday is past
        collect_trending(layout, "tech", "2026-11-18", live(youtube, live_grace_days=0, today=YESTERDAY))


def test_an_older_date_with_a_file_reuses_it_without_calling_the_api(youtube, layout):
    youtube.add_videos("28", "tech", 5)
    collect_trending(layout, "tech", OLD, live(youtube, today=OLD))   # collected on its day
    before = layout.trending("tech", OLD).read_bytes()
    youtube.requests.clear()
    youtube.add_videos("28", "tech", 5)                               # today's chart differs

    outcome = collect_trending(layout, "tech", OLD, live(youtube))
    assert (outcome.source, outcome.rows, outcome.reused, outcome.warnings) == ("youtube", 5, True, [])
    assert youtube.requests == []
    assert layout.trending("tech", OLD).read_bytes() == before

    # Asked to refresh, a past date still cannot be re-fetched: the file stays, with a warning.
    outcome = collect_trending(layout, "tech", OLD, live(youtube, refresh=True))
    assert outcome.reused and youtube.requests == []
    assert outcome.warnings[0].startswith(f"THUMBLAB_TRENDING_REFRESH=on, but {OLD} is past the live chart")


def test_re_running_a_live_date_reuses_its_file_unless_refresh_is_asked(youtube, layout):
    youtube.add_videos("28", "tech", 5)
    collect_trending(layout, "tech", TODAY, live(youtube))
    youtube.add_videos("28", "tech", 3)
    again = collect_trending(layout, "tech", TODAY, live(youtube))
    assert again.reused and again.rows == 5 and len(youtube.requests) == 1
    refreshed = collect_trending(layout, "tech", TODAY, live(youtube, refresh=True))
    assert not refreshed.reused and refreshed.rows == 8 and len(youtube.requests) == 2
    assert len(pd.read_parquet(layout.trending("tech", TODAY))) == 8


def test_the_sample_source_backfills_any_date_but_never_replaces_a_real_chart(youtube, layout):
    sample = SourceSettings(max_results=6)
    outcome = collect_trending(layout, "people", "2026-02-03", sample)
    assert (outcome.source, outcome.rows, outcome.reused) == ("sample", 6, False)

    youtube.add_videos("28", "tech", 4)
    collect_trending(layout, "tech", TODAY, live(youtube))
    kept = collect_trending(layout, "tech", TODAY, sample)
    assert (kept.source, kept.rows, kept.reused) == ("youtube", 4, True)
    assert "never replaces" in kept.warnings[0]
    assert recorded_source(layout.trending("tech", TODAY)) == "youtube"


def test_a_live_date_replaces_a_sample_chart_with_the_real_one(youtube, layout):
    collect_trending(layout, "tech", TODAY, SourceSettings(max_results=6))
    youtube.add_videos("28", "tech", 4)
    outcome = collect_trending(layout, "tech", TODAY, live(youtube))
    assert (outcome.source, outcome.rows, outcome.reused) == ("youtube", 4, False)


def test_unpinned_the_live_chart_fills_today_in_hobart(youtube, layout):
    youtube.add_videos("28", "tech", 2)
    source = live(youtube, today=None)
    assert collect_trending(layout, "tech", today_in(), source).rows == 2
    with pytest.raises(ChartUnavailableError, match="only available for today"):
        collect_trending(layout, "tech", START_DATE, source)


# --- through Dagster ----------------------------------------------------------------------

def materialize_trending(resources, key, instance, **source):
    from thumblab_dagster.defs.resources import TrendingSourceResource
    from thumblab_dagster.defs.thumbnails.assets import trending_videos

    pinned = TrendingSourceResource(**{**resources["trending_source"].model_dump(), "today": TODAY, **source})
    return dg.materialize([trending_videos], partition_key=key, instance=instance, raise_on_error=False,
                          resources={"storage": resources["storage"], "trending_source": pinned})


def test_a_past_partition_fails_with_one_line_and_no_retry(resources, youtube):
    youtube.add_videos("28", "tech", 5)
    with dg.instance_for_test() as instance:
        result = materialize_trending(resources, f"{OLD}|tech", instance)
    assert not result.success
    [failure] = [e.step_failure_data for e in result.all_events if e.is_step_failure]
    assert failure.user_failure_data.description.startswith(REFUSED)
    assert "\n" not in failure.user_failure_data.description
    assert youtube.requests == [] and files_under(resources["storage"].layout.root) == []


def test_a_past_partition_with_a_file_is_reused_and_says_so(resources, youtube):
    youtube.add_videos("28", "tech", 5)
    with dg.instance_for_test() as instance:
        assert materialize_trending(resources, f"{OLD}|tech", instance, today=OLD).success
        youtube.requests.clear()
        result = materialize_trending(resources, f"{OLD}|tech", instance)
    assert result.success and youtube.requests == []
    [mat] = result.asset_materializations_for_node("trending_videos")
    assert mat.metadata["reused"].value is True and mat.metadata["source"].value == "youtube"
    assert mat.metadata["dagster/row_count"].value == 5


# --- where the partitions start -----------------------------------------------------------

def test_the_partitions_start_at_a_recent_configurable_date():
    assert SETTING["partitions_start"].default == "2026-11-01" == partitions_start({})
    assert partitions_start({"THUMBLAB_PARTITIONS_START": "2026-11-20"}) == "2026-11-20"
    assert date_partitions.get_first_partition_key() == START_DATE == load_settings().partitions_start
    with pytest.raises(SettingsError) as bad:
        partitions_start({"THUMBLAB_PARTITIONS_START": "2026-02-31"})
    assert str(bad.value) == ("THUMBLAB_PARTITIONS_START='2026-02-31': not a calendar date: "
                              "use a date YYYY-MM-DD such as 2026-11-01")
    with pytest.raises(SettingsError, match="^THUMBLAB_PARTITIONS_START='last week': use a date YYYY-MM-DD"):
        partitions_start({"THUMBLAB_PARTITIONS_START": "last week"})


def test_the_code_location_reads_the_start_when_it_loads():
    def first_key(value):
        env = {k: v for k, v in os.environ.items() if k != "THUMBLAB_PARTITIONS_START"}
        if value is not None:
            env["THUMBLAB_PARTITIONS_START"] = value
        code = ("from thumblab_dagster.defs.thumbnails.partitions import date_partitions as d; "
                "print(d.get_first_partition_key())")
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    assert first_key(None).stdout.strip() == "2026-11-01"
    assert first_key("2026-11-20").stdout.strip() == "2026-11-20"
    bad = first_key("2026-13-01")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].endswith(
        "SettingsError: THUMBLAB_PARTITIONS_START='2026-13-01': use a date YYYY-MM-DD such as 2026-11-01")
