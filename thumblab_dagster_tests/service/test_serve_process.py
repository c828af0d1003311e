"""``thumblab serve`` as a process: stopped the way a supervisor stops it (SIGTERM), it takes its embedded
music database down with it instead of leaving a Postgres running on the data folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGTERM")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def postgres_pid(folder: Path) -> int:
    """The postmaster's pid, from the first line of ``postmaster.pid``."""
    return int((folder / "postmaster.pid").read_text().splitlines()[0])


def test_sigterm_stops_the_service_and_its_embedded_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THUMBLAB_", "SUPABASE_"))}
    env.update(THUMBLAB_DATA_ROOT=str(tmp_path / "data"), THUMBLAB_CLIP_PRETRAINED="none")
    thumblab = Path(sys.executable).parent / "thumblab"
    server = subprocess.Popen([str(thumblab), "serve", "--port", "0"], env=env, cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in server.stderr:  # uvicorn names the port it bound once it listens
            if "Uvicorn running on" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
                break
        assert port, "the service never said where it listens"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/faiss/statistics", timeout=120) as answer:
            assert json.load(answer)["total_files"] == 0  # the embedded database is up: it answered
        database = postgres_pid(tmp_path / "data" / "music_pg")
        assert running(database)

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 128 + signal.SIGTERM
        assert not running(database)  # pg_ctl stop waited for it
        assert not (tmp_path / "data" / "music_pg" / "postmaster.pid").exists()
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()
