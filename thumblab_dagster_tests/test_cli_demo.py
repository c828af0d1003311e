"""``thumblab demo`` as a newcomer runs it: a subprocess, a local instance, the sample source."""

import os
import subprocess
import sys

import dagster as dg

from thumblab_dagster.lib import vector_index
from thumblab_dagster.lib.layout import DataLayout


def test_demo_builds_checks_and_records_runs(tmp_path):
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOUTUBE_", "THUMBLAB_"))}
    env.update(DAGSTER_HOME=str(home), THUMBLAB_DATA_ROOT=str(data), THUMBLAB_CLIP_PRETRAINED="none",
               THUMBLAB_CLIP_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "thumblab_dagster.cli", "demo", "--date", "2026-11-19",
                           "--niche", "tech", "--niche", "people"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "daily_refresh for 2026-11-19 (Australia/Hobart)"
    rows = {line.split()[0]: line.split() for line in lines[4:] if line.strip()}
    assert set(rows) == {"tech", "people"}
    # niche ok source videos embedded skipped indexed published checks...
    assert rows["tech"][1:8] == ["yes", "sample", "30", "30", "0", "30", "yes"]
    assert "embedding_weights_pretrained WARN" in " ".join(rows["tech"])
    published = vector_index.load_published(DataLayout.at(data).published, "people")
    assert published.ntotal == 30

    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"daily_refresh"} and len(runs) == 2
    assert {r.tags["dagster/partition"] for r in runs} == {"2026-11-19|tech", "2026-11-19|people"}
