"""The operations endpoints: launch the thumbnails' Dagster jobs for a day's partitions, and ask how a run is doing.

``/internal/refresh-library`` launches ``daily_refresh`` and ``/internal/rebuild-indices`` the index tail
alone (``rebuild_indices``: the niche index, its checks, the published copy, the stats and the upload),
one run per niche of the day ("today" is the date in Australia/Hobart: the partition the 03:00 schedule
targets that day). ``/internal/runs/{run_id}`` reports a run's status. POST launches; GET does the same
for the seed's clients. Every endpoint takes the internal bearer token.

They speak to the Dagster webserver's GraphQL API at THUMBLAB_DAGSTER_URL the way its launchpad does:
the job is looked up by name, each partition must be one the deployment has, and a run's partition tags
are the ones Dagster itself gives for that partition (``dagster/partition`` and one per dimension).
Nothing here copies Dagster's rules or imports Dagster.

A failure is one line: not configured or not reachable is a 503, a deployment that answers with an
error a 502, a partition it does not have a 422, an unknown run a 404. Neither the bearer token nor
Dagster's URL (which may carry credentials) is ever in an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone
from typing import Annotated, Literal

import requests
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES, TIMEZONE
from thumblab_dagster.lib.collections.thumbnails.trending import today_in
from thumblab_dagster.lib.settings import SETTING

log = logging.getLogger(__name__)

URL_ENV = SETTING["dagster_url"].env
REFRESH_JOB = "daily_refresh"
REBUILD_JOB = "rebuild_indices"
ORIGIN_TAG = {"key": "thumblab/origin", "value": "service"}  # tells these runs apart in the UI (the demo's: "demo")
RUN_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"  # Dagster's run ids are UUIDs
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# Launching builds each run's execution plan in the code server: seconds on a busy machine, not milliseconds.
TIMEOUT_S = (3.05, 60.0)  # (connect, read)
MAX_REASON_CHARS = 300


# --- errors: each one line, with the HTTP status it answers --------------------------------------

class DagsterError(Exception):
    """The deployment answered, with an error."""
    status = 502


class DagsterUnavailable(DagsterError):
    """Not configured, not reachable, or not a Dagster webserver."""
    status = 503


class NoSuchPartition(DagsterError):
    status = 422


class RunNotFound(DagsterError):
    status = 404


def _one_line(text) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return (lines[0] if lines else "(no message)")[:MAX_REASON_CHARS]


def _cause(exc: requests.RequestException) -> str:
    """What went wrong on the way, in words; requests' own text names the host and port."""
    text = str(exc)
    for needle, words in (("Connection refused", "connection refused"), ("NameResolution", "cannot resolve the host"),
                          ("Name or service not known", "cannot resolve the host"), ("SSL", "the TLS handshake failed"),
                          ("Connection reset", "connection reset"), ("RemoteDisconnected", "the connection was closed")):
        if needle in text:
            return words
    return type(exc).__name__


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


# --- the GraphQL client ----------------------------------------------------------------------------

REPOSITORIES = """
query ThumblabRepositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on Error { message }
  }
}"""

LAUNCH = """
mutation ThumblabLaunch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}"""

RUN = """
query ThumblabRun($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status jobName creationTime startTime endTime tags { key value } }
    ... on Error { message }
  }
}"""


def _partitions_query(count: int) -> str:
    """The job's partition keys and, for each of ``count`` keys ($k0 ...), the tags Dagster gives its run."""
    keys = ", ".join(f"$k{i}: String!" for i in range(count))
    each = "\n".join(f"p{i}: partition(partitionName: $k{i}) {{ tagsOrError {{ __typename "
                     f"... on PartitionTags {{ results {{ key value }} }} ... on Error {{ message }} }} }}"
                     for i in range(count))
    return f"""
query ThumblabPartitions($selector: PipelineSelector!, {keys}) {{
  pipelineOrError(params: $selector) {{
    __typename
    ... on Pipeline {{ partitionKeysOrError {{ partitionKeys }}
{each}
    }}
    ... on Error {{ message }}
  }}
}}"""


@dataclass(frozen=True)
class LaunchedRun:
    partition: str
    run_id: str


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str
    job: str
    partition: str | None
    created: str | None
    started: str | None
    ended: str | None


class DagsterClient:
    """The few GraphQL calls the operations endpoints make, each with a bounded wait."""

    def __init__(self, url: str, *, timeout: tuple[float, float] = TIMEOUT_S):
        self._endpoint = url.rstrip("/") + "/graphql"
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"DagsterClient(<{URL_ENV}>)"  # the URL may carry credentials

    def query(self, document: str, variables: dict | None = None) -> dict:
        try:
            resp = requests.post(self._endpoint, json={"query": document, "variables": variables or {}},
                                 timeout=self.timeout)
        except requests.Timeout:
            raise DagsterUnavailable(f"the Dagster webserver ({URL_ENV}) did not answer within "
                                     f"{self.timeout[1]:g} s") from None
        except requests.RequestException as exc:
            raise DagsterUnavailable(f"the Dagster webserver ({URL_ENV}) is unreachable: {_cause(exc)}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not ("data" in body or "errors" in body):
            raise DagsterUnavailable(f"{URL_ENV} does not answer like a Dagster webserver "
                                     f"(HTTP {resp.status_code} from /graphql)")
        if body.get("errors"):
            raise DagsterError(f"the Dagster webserver refused the query: {_one_line(_first_message(body['errors']))}")
        if not isinstance(body.get("data"), dict):
            raise DagsterUnavailable(f"{URL_ENV} does not answer like a Dagster webserver (no data)")
        return body["data"]

    def job(self, name: str) -> dict:
        """The job's code location and repository (looked up: a deployment names its own)."""
        found = self.query(REPOSITORIES)["repositoriesOrError"]
        if found["__typename"] != "RepositoryConnection":
            raise DagsterError(f"the Dagster webserver could not list its jobs: {_one_line(found.get('message'))}")
        places = [{"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}
                  for repo in found["nodes"] if any(job["name"] == name for job in repo["jobs"])]
        if not places:
            raise DagsterError(f"the Dagster deployment has no job {name} (is the thumblab_dagster code location "
                               "loaded, and up to date?)")
        if len(places) > 1:
            raise DagsterError(f"{len(places)} code locations on the Dagster deployment have a job {name}")
        return places[0]

    def partition_tags(self, place: dict, job: str, keys: Sequence[str]) -> dict[str, list[dict]]:
        """Each key's run tags, as Dagster gives them; ``NoSuchPartition`` for a key the job does not have."""
        variables = {"selector": {**place, "pipelineName": job}, **{f"k{i}": key for i, key in enumerate(keys)}}
        found = self.query(_partitions_query(len(keys)), variables)["pipelineOrError"]
        if found["__typename"] != "Pipeline":
            raise DagsterError(f"the Dagster deployment could not describe {job}: {_one_line(found.get('message'))}")
        known = found["partitionKeysOrError"]["partitionKeys"]
        have = set(known)
        for key in keys:
            if key not in have:
                span = f"it has {min(known)} .. {max(known)}" if known else "it has none"
                raise NoSuchPartition(f"{key} is not a partition of {job} on the Dagster deployment ({span})")
        tags = {}
        for i, key in enumerate(keys):
            answer = found[f"p{i}"]["tagsOrError"]
            if answer["__typename"] != "PartitionTags":
                raise DagsterError(f"the Dagster deployment has no run tags for {key}: {_one_line(answer.get('message'))}")
            tags[key] = [{"key": t["key"], "value": t["value"]} for t in answer["results"]]
        return tags

    def launch(self, job: str, keys: Sequence[str]) -> list[LaunchedRun]:
        """One run of ``job`` per partition key, in order; a failure names the runs launched before it.

        One call per run: without a queue (no daemon) Dagster answers a launch only once the run's
        process has started, seconds each, so each call gets the whole timeout and a timeout loses none.
        """
        place = self.job(job)
        tags = self.partition_tags(place, job, keys)
        launched: list[LaunchedRun] = []
        for key in keys:
            params = {"selector": {**place, "jobName": job}, "runConfigData": {},
                      "executionMetadata": {"tags": [*tags[key], ORIGIN_TAG]}}
            try:
                result = self.query(LAUNCH, {"params": params})["launchRun"]
                if result["__typename"] != "LaunchRunSuccess":
                    raise DagsterError(f"the Dagster deployment refused {key}: {result['__typename']}: "
                                       f"{_launch_error(result)}")
            except DagsterError as exc:
                if launched:
                    done = ", ".join(f"{r.partition} as {r.run_id}" for r in launched)
                    raise type(exc)(f"{exc} (after launching {done})") from None
                raise
            launched.append(LaunchedRun(key, result["run"]["runId"]))
        return launched

    def run(self, run_id: str) -> RunInfo:
        found = self.query(RUN, {"runId": run_id})["runOrError"]
        if found["__typename"] == "RunNotFoundError":
            raise RunNotFound(f"no run {run_id} on the Dagster deployment")
        if found["__typename"] != "Run":
            raise DagsterError(f"the Dagster deployment could not report run {run_id}: {_one_line(found.get('message'))}")
        tags = {t["key"]: t["value"] for t in found["tags"]}
        return RunInfo(found["runId"], found["status"], found["jobName"], tags.get("dagster/partition"),
                       _iso(found.get("creationTime")), _iso(found.get("startTime")), _iso(found.get("endTime")))


def _first_message(errors) -> str:
    first = errors[0] if isinstance(errors, list) and errors else errors
    return first.get("message") if isinstance(first, dict) else str(first)


def _launch_error(result: dict) -> str:
    if result.get("message"):
        return _one_line(result["message"])
    if result.get("errors"):
        return _one_line(result["errors"][0].get("message"))
    return _one_line(result.get("invalidStepKey") or result.get("invalidOutputName") or "refused")


# --- the thumbnails' partitions ------------------------------------------------------------------

def day_partitions(day: str | None = None, niches: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """``(day, ["<day>|<niche>", ...])``: ``day`` defaults to today in Australia/Hobart (what the 03:00
    schedule targets that day), ``niches`` to all of them (in their order, each once)."""
    day = day or today_in(TIMEZONE)
    chosen = [n for n in NICHES if n in set(niches)] if niches else list(NICHES)
    return day, [f"{day}|{niche}" for niche in chosen]


# --- the endpoints ---------------------------------------------------------------------------------

Niche = Literal[NICHES]


class Run(BaseModel):
    partition: str = Field(examples=["2026-11-30|tech"], description="The run's partition: date|niche.")
    run_id: str = Field(examples=["5b1c0a52-6d1e-4f0e-9a43-2f1f4b7d8c9e"])


class Launched(BaseModel):
    job: str = Field(examples=[REFRESH_JOB])
    date: str = Field(examples=["2026-11-30"], description="The partitions' date (Australia/Hobart).")
    run_ids: list[str] = Field(description="One run per partition, in the order of `runs`.")
    runs: list[Run]


class RunReport(BaseModel):
    run_id: str
    status: str = Field(examples=["STARTED"], description="Dagster's run status: QUEUED, STARTING, STARTED, "
                        "SUCCESS, FAILURE, CANCELING, CANCELED, ...")
    job: str = Field(examples=[REFRESH_JOB])
    partition: str | None = Field(default=None, examples=["2026-11-30|tech"])
    created: str | None = Field(default=None, description="When the run was launched (ISO 8601, UTC).")
    started: str | None = Field(default=None, description="When it started (null until then).")
    ended: str | None = Field(default=None, description="When it ended (null until then).")


DateParam = Annotated[str | None, Query(pattern=DATE_PATTERN, examples=["2026-11-30"],
                                        description="The partitions' date, YYYY-MM-DD (default: today in "
                                                    "Australia/Hobart).")]
NicheParam = Annotated[list[Niche] | None, Query(description="Niches to launch (repeat the parameter); default: all.")]

_ERRORS = {401: {"description": "Missing or wrong bearer token."},
           404: {"description": "Disabled: THUMBLAB_INTERNAL_TOKEN is not set."},
           422: {"description": "A date or niche that is not valid, or a partition the deployment does not have."},
           502: {"description": "The Dagster deployment answered with an error (the reason, in one line)."},
           503: {"description": f"{URL_ENV} is not set, or the Dagster webserver is unreachable."}}


def operations_router(dagster_url: str | None, require_token: Callable) -> APIRouter:
    """The operations endpoints over the Dagster webserver at ``dagster_url`` (None: each answers 503)."""
    client = DagsterClient(dagster_url) if dagster_url else None
    router = APIRouter(dependencies=[Depends(require_token)], tags=["operations"], responses=_ERRORS)

    def ask(call: Callable, *args):
        """``call`` on the client; its failure as the one-line HTTP answer."""
        if client is None:
            raise HTTPException(status_code=503, detail=f"run launches are disabled: set {URL_ENV} to the Dagster "
                                                        "webserver's URL, e.g. http://127.0.0.1:3000")
        try:
            return call(client, *args)
        except DagsterError as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        except (KeyError, IndexError, TypeError):  # an answer of another shape (another Dagster version?)
            log.exception("unexpected answer from the Dagster webserver")
            raise HTTPException(status_code=502, detail="the Dagster webserver answered in a shape this service "
                                                        "does not know (see the service log)") from None

    def launch(job: str, date: str | None, niche: list[str] | None) -> Launched:
        if date is not None:
            try:
                Date.fromisoformat(date)
            except ValueError:
                raise RequestValidationError([{"loc": ("query", "date"), "type": "date_invalid",
                                               "msg": "not a calendar date: use YYYY-MM-DD"}]) from None
        day, keys = day_partitions(date, niche)
        runs = ask(DagsterClient.launch, job, keys)
        return Launched(job=job, date=day, run_ids=[r.run_id for r in runs],
                        runs=[Run(partition=r.partition, run_id=r.run_id) for r in runs])

    def refresh_library(date: DateParam = None, niche: NicheParam = None) -> Launched:
        return launch(REFRESH_JOB, date, niche)

    def rebuild_indices(date: DateParam = None, niche: NicheParam = None) -> Launched:
        return launch(REBUILD_JOB, date, niche)

    for path, endpoint, what in (
            ("/internal/refresh-library", refresh_library,
             f"Launch {REFRESH_JOB} (collect, embed, index, check, publish) for a day's partitions"),
            ("/internal/rebuild-indices", rebuild_indices,
             f"Launch {REBUILD_JOB} (index, checks, publish, stats, upload from the embeddings on disk) "
             "for a day's partitions")):
        router.add_api_route(path, endpoint, methods=["POST"], response_model=Launched,
                             summary=f"{what} (bearer token)", operation_id=f"{endpoint.__name__}_post")
        router.add_api_route(path, endpoint, methods=["GET"], response_model=Launched,
                             summary=f"{what} (GET, for the seed's clients; bearer token)",
                             operation_id=f"{endpoint.__name__}_get")

    @router.get("/internal/runs/{run_id}", response_model=RunReport, summary="A launched run's status (bearer token)",
                responses={404: {"description": "No such run (or the token is not set)."}})
    def run_status(run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="The run id a launch returned.")]
                   ) -> RunReport:
        info = ask(DagsterClient.run, run_id)
        return RunReport(run_id=info.run_id, status=info.status, job=info.job, partition=info.partition,
                         created=info.created, started=info.started, ended=info.ended)

    return router
