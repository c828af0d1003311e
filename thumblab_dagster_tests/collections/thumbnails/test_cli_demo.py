"""``thumblab demo`` as a newcomer runs it: a subprocess, a local instance, the sample source."""

import json
import os
import subprocess
import sys
from datetime import date, timedelta

import dagster as dg
import pytest
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.demo import summarise, today_in_hobart
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import NothingToEmbedError
from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail, trending_items
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster_tests.conftest import TEST_KEY


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``thumblab demo`` for tech and people, run once as a subprocess."""
    tmp_path = tmp_path_factory.mktemp("demo")
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOUTUBE_", "THUMBLAB_"))}
    env.update(DAGSTER_HOME=str(home), THUMBLAB_DATA_ROOT=str(data), THUMBLAB_CLIP_PRETRAINED="none",
               THUMBLAB_CLIP_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "thumblab_dagster.cli", "demo", "--date", "2026-11-19",
                           "--niche", "tech", "--niche", "people"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return proc, home, data


def test_demo_builds_checks_and_records_runs(demo):
    proc, home, data = demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "daily_refresh for 2026-11-19 (Australia/Hobart)"
    rows = {line.split()[0]: line.split() for line in lines[4:] if line.strip()}
    assert set(rows) == {"tech", "people"}
    # niche ok source videos embedded skipped indexed published checks...
    assert rows["tech"][1:8] == ["yes", "sample", "30", "30", "0", "30", "yes"]
    assert "embedding_weights_pretrained WARN" in " ".join(rows["tech"])
    published = publishing.load_published(DataLayout.at(data).published, "people")
    assert published.ntotal == 30

    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"daily_refresh"} and len(runs) == 2
    assert {r.tags["dagster/partition"] for r in runs} == {"2026-11-19|tech", "2026-11-19|people"}


def query(data, *args):
    """The query CLI in-process, with the demo's environment."""
    env = {"THUMBLAB_DATA_ROOT": str(data), "THUMBLAB_PUBLISH_DIR": None, "THUMBLAB_CLIP_PRETRAINED": "none",
           "THUMBLAB_CLIP_DEVICE": "cpu"}
    return CliRunner().invoke(main, list(args), env=env)


def test_stats_lists_every_niche_with_its_vector_count(demo):
    _, _, data = demo
    result = query(data, "stats", "--json")
    assert result.exit_code == 0, result.output
    niches = json.loads(result.output)["niches"]
    assert list(niches) == ["tech", "gaming", "education", "entertainment", "people"]
    assert niches["tech"]["num_vectors"] == 30 and niches["people"]["num_vectors"] == 30
    assert niches["gaming"]["exists"] is False
    table = query(data, "stats").output
    assert "tech" in table and "missing" in table and "Flat" in table


def test_score_and_similar_a_sample_thumbnail(demo, tmp_path):
    _, _, data = demo
    video = trending_items("tech", "2026-11-19", 30)[4]
    image = tmp_path / "upload.png"
    render_thumbnail("tech", video["id"]).save(image)
    result = query(data, "score", str(image), "--niche", "tech", "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert 0 <= scored["percentile"] <= 100 and scored["source"] == "local" and scored["reason"]
    assert scored["similar"][0]["video_id"] == video["id"]  # a trending thumbnail finds itself first
    similar = json.loads(query(data, "similar", str(image), "--niche", "tech", "-k", "3", "--json").output)
    assert [s["video_id"] for s in similar["similar"]][:1] == [video["id"]] and len(similar["similar"]) == 3
    human = query(data, "score", str(image), "--niche", "tech")
    assert human.exit_code == 0 and "tech: percentile" in human.output and video["id"] in human.output


def test_query_cli_exit_codes(demo, tmp_path):
    _, _, data = demo
    image = tmp_path / "upload.png"
    render_thumbnail("tech", "any").save(image)
    missing = query(data, "score", str(image), "--niche", "gaming", "--json")
    assert missing.exit_code == 3 and json.loads(missing.stdout)["is_default"] is True
    assert "no index for niche 'gaming'" in missing.stderr
    unreadable = query(data, "score", str(tmp_path / "nope.png"), "--niche", "tech")
    assert unreadable.exit_code == 1 and unreadable.stderr.strip().count("\n") == 0
    assert "cannot read" in unreadable.stderr and "file not found" in unreadable.stderr
    assert query(data, "similar", str(image), "--niche", "tech", "-k", "0").exit_code == 2  # usage error


# --- failures: the root cause, not Dagster's wrapper ---------------------------------------------

def live_demo(tmp_path, youtube, *args):
    """``thumblab demo`` in-process against the loopback YouTube (a real key's code path)."""
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "THUMBLAB_DATA_ROOT": str(tmp_path / "data"),
           "YOUTUBE_API_KEY": TEST_KEY, "YOUTUBE_API_BASE_URL": youtube.base_url,
           "THUMBLAB_CLIP_PRETRAINED": "none", "THUMBLAB_CLIP_DEVICE": "cpu"}
    return CliRunner().invoke(main, ["demo", *args], env=env)


def failures_of(output: str) -> dict:
    listed = output.split("\nfailures:\n", 1)[1].splitlines()
    return dict(line.strip().split(": ", 1) for line in listed if line.strip())


def test_demo_summary_shows_each_failed_niches_step_and_root_cause(tmp_path, youtube):
    youtube.errors["28"] = [(403, "quotaExceeded")] * 3
    youtube.add_videos("22", "people", 2)
    youtube.charts["22"][0]["snippet"] = 5                      # wrong-shaped JSON from "the API"
    result = live_demo(tmp_path, youtube, "--niche", "tech", "--niche", "people")
    assert result.exit_code == 1, result.output
    failures = failures_of(result.output)
    assert failures["tech"].startswith("trending_videos failed: YouTube Data API quota exhausted")
    assert "quota reset" in failures["tech"]
    assert failures["people"].startswith("trending_videos failed: YouTube API at ")
    assert "items[0].snippet is the number 5, expected an object" in failures["people"]
    assert "DagsterExecutionStepExecutionError" not in result.output and TEST_KEY not in result.output


def test_demo_of_a_past_date_with_the_api_refuses_in_one_line(tmp_path, youtube):
    youtube.add_videos("28", "tech", 3)
    today = today_in_hobart()
    past = (date.fromisoformat(today) - timedelta(days=5)).isoformat()
    result = live_demo(tmp_path, youtube, "--date", past, "--niche", "tech")
    assert result.exit_code == 1, result.output
    assert failures_of(result.output)["tech"].startswith(
        f"trending_videos failed: YouTube's chart is only available for today ({today} in Australia/Hobart); "
        f"{past} can't be collected now")
    assert youtube.requests == [] and not (tmp_path / "data" / "trending").exists()


def test_root_cause_looks_under_dagsters_wrapper():
    @dg.asset
    def broken():
        raise ValueError("the real reason\nand its second line")

    @dg.asset
    def empty():
        raise NothingToEmbedError("all 3 thumbnails of education on 2026-11-19 failed to fetch")

    @dg.asset
    def refused():
        raise dg.Failure(description="YouTube's chart is only available for today")

    errors = {name: summarise("tech", dg.materialize([asset], raise_on_error=False)).error
              for name, asset in [("broken", broken), ("empty", empty), ("refused", refused)]}
    assert errors == {"broken": "broken failed: ValueError: the real reason",
                      "empty": "empty failed: all 3 thumbnails of education on 2026-11-19 failed to fetch",
                      "refused": "refused failed: YouTube's chart is only available for today"}
