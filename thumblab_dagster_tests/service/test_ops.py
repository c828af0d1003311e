"""The operations endpoints through a real uvicorn server: runs launched on a real ``dagster-webserver``
started on loopback (its own DAGSTER_HOME and data root), their status reported, and every refusal a
one-line answer that never carries the token."""

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES, TIMEZONE
from thumblab_dagster.lib.collections.thumbnails.trending import today_in
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster.service.ops import REBUILD_JOB, RUN, day_partitions
from thumblab_dagster_tests.service.server import TOKEN, ImageHandler, serving

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARTUP_DEADLINE_S = 180  # loading the code location imports torch and open_clip: slow on 2 busy cores
RUN_DEADLINE_S = 90
WAITING = {"QUEUED", "NOT_STARTED", "STARTING"}
LAUNCHED_OK = WAITING | {"STARTED", "SUCCESS"}
INSTANCE = """\
run_coordinator:   # launch at once: no daemon runs in the test
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
TERMINATE = "mutation T($id: String!) { terminateRun(runId: $id) { __typename } }"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webserver_env(home: Path, data: Path) -> dict:
    """This environment without the project's own settings, the data and instance in temp dirs, the bundled
    sample as the source and random CLIP weights (nothing to download)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THUMBLAB_", "YOUTUBE_", "SUPABASE_"))}
    env.update(DAGSTER_HOME=str(home), THUMBLAB_DATA_ROOT=str(data), THUMBLAB_PARTITIONS_START="2026-01-01",
               THUMBLAB_CLIP_PRETRAINED="none", THUMBLAB_CLIP_DEVICE="cpu", HF_HUB_OFFLINE="1")
    return env


@dataclass
class Deployment:
    base: str
    proc: subprocess.Popen
    log: Path
    runs: list[str] = field(default_factory=list)  # terminated at the end

    def pause(self, seconds: float) -> None:
        """Between two polls: waits on the webserver process, so its exit is seen at once."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return
        pytest.fail(f"dagster-webserver exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")

    def terminate(self, run_id: str) -> None:
        try:
            requests.post(f"{self.base}/graphql", json={"query": TERMINATE, "variables": {"id": run_id}}, timeout=30)
        except requests.RequestException:
            pass

    def wait_ready(self) -> None:
        """Until the webserver answers /server_info and lists the code location's jobs, or the deadline."""
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/server_info", timeout=5).ok:
                    repos = requests.post(f"{self.base}/graphql", timeout=30, json={
                        "query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"})
                    nodes = repos.json()["data"]["repositoriesOrError"].get("nodes") or []
                    if any(job["name"] == "daily_refresh" for node in nodes for job in node["jobs"]):
                        return
            except requests.RequestException:
                pass
            self.pause(0.5)
        pytest.fail(f"dagster-webserver not ready within {STARTUP_DEADLINE_S} s: {self.log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the webserver's process group: the webserver stops its code server as it shuts down; then
    SIGKILL to whatever of the group is left (a run worker still starting)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    """A ``dagster-webserver`` on a loopback port over this repository's code location."""
    root = tmp_path_factory.mktemp("dagster")
    (root / "home").mkdir()
    (root / "home" / "dagster.yaml").write_text(INSTANCE)
    base = f"http://127.0.0.1:{free_port()}"
    log = root / "webserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", base.rsplit(":", 1)[1],
                                 "-m", "thumblab_dagster.definitions"], cwd=REPO,
                                env=webserver_env(root / "home", root / "data"), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deployment = Deployment(base, proc, log)
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        for run_id in deployment.runs:  # cleanly first: Dagster marks them canceled
            deployment.terminate(run_id)
        stop_group(proc)


@pytest.fixture(scope="module")
def ops(dagster, clip, tmp_path_factory):
    """The service (no index published: these endpoints need none) pointed at that webserver."""
    settings = ServiceSettings(publish_dir=str(tmp_path_factory.mktemp("pub")), internal_token=TOKEN,
                               dagster_url=dagster.base)
    with serving(create_app(settings, clip=clip)) as service:
        yield service, dagster


def run_tags(dagster_base: str, run_id: str) -> dict:
    found = requests.post(f"{dagster_base}/graphql", json={"query": RUN, "variables": {"runId": run_id}},
                          timeout=30).json()["data"]["runOrError"]
    return {t["key"]: t["value"] for t in found["tags"]}


def test_refresh_library_launches_todays_run_and_reports_its_status(ops):
    service, dagster = ops
    today = today_in()  # Australia/Hobart: the partition the 03:00 schedule targets today
    resp = requests.post(f"{service}/internal/refresh-library", params={"niche": "tech"}, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    dagster.runs += body["run_ids"]
    assert (body["job"], body["date"]) == ("daily_refresh", today)
    assert [r["partition"] for r in body["runs"]] == [f"{today}|tech"] and body["run_ids"] == [body["runs"][0]["run_id"]]
    run_id = body["run_ids"][0]

    # the run carries the tags Dagster gives that partition (one per dimension), as a scheduled run would
    tags = run_tags(dagster.base, run_id)
    assert tags["dagster/partition"] == f"{today}|tech"
    assert (tags["dagster/partition/date"], tags["dagster/partition/niche"]) == (today, "tech")
    assert tags["thumblab/origin"] == "service"

    report = requests.get(f"{service}/internal/runs/{run_id}", headers=AUTH, timeout=60)
    assert report.status_code == 200, report.text
    status = report.json()
    assert status["status"] in LAUNCHED_OK, status
    assert (status["run_id"], status["job"], status["partition"]) == (run_id, "daily_refresh", f"{today}|tech")
    assert status["created"] is not None

    # A real run: its worker starts executing (bounded wait; the run itself takes minutes and is cancelled
    # at the end). A run that failed at once (e.g. a partition it could not read) fails here.
    deadline = time.monotonic() + RUN_DEADLINE_S
    while status["status"] in WAITING and time.monotonic() < deadline:
        dagster.pause(0.5)
        status = requests.get(f"{service}/internal/runs/{run_id}", headers=AUTH, timeout=60).json()
    assert status["status"] in LAUNCHED_OK, status
    if status["status"] != "STARTING":
        assert status["started"] is not None
    dagster.terminate(run_id)  # its minutes of CPU are not this test's


def test_rebuild_indices_launches_the_index_tail(ops):
    service, dagster = ops
    today = today_in()
    resp = requests.get(f"{service}/internal/rebuild-indices", params={"niche": "gaming"}, headers=AUTH,
                        timeout=120)  # GET, as the seed's clients call it
    assert resp.status_code == 200, resp.text
    body = resp.json()
    dagster.runs += body["run_ids"]
    assert body["job"] == "rebuild_indices" and [r["partition"] for r in body["runs"]] == [f"{today}|gaming"]
    report = requests.get(f"{service}/internal/runs/{body['run_ids'][0]}", headers=AUTH, timeout=60).json()
    assert (report["job"], report["partition"]) == ("rebuild_indices", f"{today}|gaming")
    assert report["status"] in LAUNCHED_OK | {"FAILURE"}  # nothing collected yet: the tail may fail at once


def test_rebuild_indices_is_the_index_tail_alone(tmp_path):
    from thumblab_dagster.definitions import build_definitions
    from thumblab_dagster.defs.resources import IndexUploadResource, resources_from_env

    tail = {"niche_index", "niche_index_id_map_alignment", "niche_index_index_recall", "niche_index_enough_references",
            "published_index", "index_stats"}
    for extra, more in (({}, set()), ({"index_upload": IndexUploadResource(url=f"file://{tmp_path}/up")},
                                      {"uploaded_index"})):
        job = build_definitions({**resources_from_env({}), **extra}).resolve_job_def(REBUILD_JOB)
        assert {node.name for node in job.nodes} == tail | more  # no collecting, no embedding


def test_a_day_is_one_partition_per_niche_in_the_niches_order():
    assert day_partitions("2026-11-30") == ("2026-11-30", [f"2026-11-30|{n}" for n in NICHES])
    assert day_partitions("2026-11-30", ["people", "tech", "people"]) == ("2026-11-30", ["2026-11-30|tech",
                                                                                         "2026-11-30|people"])
    assert day_partitions(None, ["tech"]) == (today_in(TIMEZONE), [f"{today_in(TIMEZONE)}|tech"])


def test_a_date_the_deployment_has_no_partition_for_is_a_422_naming_it(ops):
    service, _ = ops
    resp = requests.post(f"{service}/internal/refresh-library", params={"date": "2020-01-01", "niche": "tech"},
                         headers=AUTH, timeout=120)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert "2020-01-01|tech is not a partition of daily_refresh" in detail and "2026-01-01|" in detail


def test_an_unknown_run_is_a_404(ops):
    service, _ = ops
    resp = requests.get(f"{service}/internal/runs/00000000-0000-4000-8000-000000000000", headers=AUTH, timeout=60)
    assert resp.status_code == 404 and "no run 00000000-0000-4000-8000-000000000000" in resp.json()["detail"]


# --- without a webserver -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unreachable_port():
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def not_dagster():
    """A loopback HTTP server that is not Dagster (it answers POST /graphql with an HTML error)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _service(clip, tmp_path, **settings):
    return serving(create_app(ServiceSettings(publish_dir=str(tmp_path), **settings), clip=clip))


LAUNCHES = [("post", "/internal/refresh-library"), ("get", "/internal/refresh-library"),
            ("post", "/internal/rebuild-indices"), ("get", "/internal/rebuild-indices"),
            ("get", "/internal/runs/00000000-0000-4000-8000-000000000000")]


def test_unset_or_unreachable_dagster_is_a_503_with_a_reason(clip, tmp_path, unreachable_port, not_dagster):
    cases = {None: "set THUMBLAB_DAGSTER_URL",
             f"http://127.0.0.1:{unreachable_port}": "is unreachable: connection refused",
             not_dagster: "does not answer like a Dagster webserver"}
    for url, reason in cases.items():
        with _service(clip, tmp_path, internal_token=TOKEN, dagster_url=url) as base:
            for method, path in LAUNCHES:
                resp = requests.request(method, f"{base}{path}", headers=AUTH, timeout=60)
                assert resp.status_code == 503, (url, path, resp.text)
                detail = resp.json()["detail"]
                assert reason in detail and "\n" not in detail and TOKEN not in resp.text
                if url:
                    assert url not in detail and str(unreachable_port) not in detail  # nor where Dagster is


def test_the_operations_endpoints_need_the_token(clip, tmp_path, unreachable_port):
    url = f"http://127.0.0.1:{unreachable_port}"
    with _service(clip, tmp_path, internal_token=TOKEN, dagster_url=url) as base:
        for method, path in LAUNCHES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                resp = requests.request(method, f"{base}{path}", headers=headers, timeout=60)
                assert resp.status_code == 401, (method, path, headers, resp.text)
                assert resp.headers["WWW-Authenticate"] == "Bearer" and TOKEN not in resp.text
    with _service(clip, tmp_path, dagster_url=url) as base:  # no token set: the endpoints do not exist
        for method, path in LAUNCHES:
            assert requests.request(method, f"{base}{path}", headers=AUTH, timeout=60).status_code == 404


@pytest.mark.parametrize("query", [{"date": "2026-02-31"}, {"date": "30/11/2026"}, {"date": "../../etc"},
                                   {"niche": "cooking"}, {"niche": ["tech", "tech/../x"]}])
def test_a_bad_date_or_niche_is_a_422_naming_the_field(clip, tmp_path, unreachable_port, query):
    with _service(clip, tmp_path, internal_token=TOKEN, dagster_url=f"http://127.0.0.1:{unreachable_port}") as base:
        resp = requests.post(f"{base}/internal/refresh-library", params=query, headers=AUTH, timeout=60)
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["detail"]
    assert error["loc"][:2] == ["query", next(iter(query))] and "input" not in error
    assert "etc" not in resp.text and "cooking" not in resp.text  # the value sent is not echoed


@pytest.mark.parametrize("run_id", ["not-a-run", "00000000-0000-4000-8000-00000000000", "..%2F..%2Fgraphql",
                                    "00000000-0000-4000-8000-000000000000%0A"])
def test_a_malformed_run_id_is_refused_before_dagster_is_asked(clip, tmp_path, unreachable_port, run_id):
    # Dagster is unreachable here: a 503 would mean the id went out
    with _service(clip, tmp_path, internal_token=TOKEN, dagster_url=f"http://127.0.0.1:{unreachable_port}") as base:
        resp = requests.get(f"{base}/internal/runs/{run_id}", headers=AUTH, timeout=60)
    assert resp.status_code in (404, 422), resp.text
    assert resp.status_code == 404 or resp.json()["detail"][0]["loc"] == ["path", "run_id"]


def test_the_schema_documents_the_operations_as_bearer_guarded(clip, tmp_path):
    with _service(clip, tmp_path, internal_token=TOKEN) as base:
        paths = requests.get(f"{base}/openapi.json", timeout=30).json()["paths"]
    for method, path in LAUNCHES:
        operation = paths[path.replace("00000000-0000-4000-8000-000000000000", "{run_id}")][method]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert {"200", "401", "503"} <= set(operation["responses"])
    assert paths["/internal/refresh-library"]["post"]["operationId"] != paths["/internal/refresh-library"]["get"]["operationId"]
    niche = next(p for p in paths["/internal/refresh-library"]["post"]["parameters"] if p["name"] == "niche")
    assert niche["schema"]["anyOf"][0]["items"]["enum"] == list(NICHES)
