import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

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


REPO = Path(__file__).resolve().parents[2]


def test_the_schedule_says_what_it_does():
    assert "03:00 Australia/Hobart" in schedule().description


def readme_command(words: str) -> list[str]:
    """The README's shell line containing ``words``, as argv for this interpreter's dagster."""
    [line] = [line for line in (REPO / "README.md").read_text().splitlines()
              if words in line and line.startswith(("DAGSTER_HOME=", ".venv/"))]
    argv = shlex.split(line)
    while "=" in argv[0]:  # VAR=value prefixes: the test sets its own DAGSTER_HOME
        argv.pop(0)
    assert argv[0] == ".venv/bin/dagster", line
    return [sys.executable, "-m", "dagster", *argv[1:]]


def test_the_readmes_command_turns_the_schedule_on_where_make_dev_looks(tmp_path):
    # `make dev` serves the code location that workspace.yaml names, on $DAGSTER_HOME
    assert "dagster dev -w workspace.yaml" in (REPO / "Makefile").read_text()
    [location] = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    name = location["python_module"]["location_name"]

    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    started = subprocess.run(readme_command("dagster schedule start"), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        [state] = instance.all_instigator_state()
    assert (state.name, state.status.value) == ("daily_refresh_schedule", "RUNNING")
    assert state.origin.repository_origin.code_location_origin.location_name == name

    listed = subprocess.run([sys.executable, "-m", "dagster", "schedule", "list", "-w", "workspace.yaml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "Schedule: daily_refresh_schedule [RUNNING]" in listed.stdout, listed.stderr[-3000:]
