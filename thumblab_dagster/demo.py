"""``thumblab demo``: run today's daily_refresh for every niche and print what happened."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from thumblab_dagster.lib.collections.thumbnails.niches import NICHES
from thumblab_dagster.lib.collections.thumbnails.trending import today_in

# Progress (INFO) on the console; Dagster's step-by-step DEBUG events stay in the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def today_in_hobart() -> str:
    return today_in()  # the partitions' timezone, Australia/Hobart


@dataclass
class NicheSummary:
    niche: str
    success: bool
    source: str = "-"
    videos: int | None = None
    embedded: int | None = None
    skipped: int | None = None
    indexed: int | None = None
    published: bool | None = None
    checks: dict = field(default_factory=dict)
    error: str = ""


def _value(metadata: dict, key: str):
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def summarise(niche: str, result) -> NicheSummary:
    summary = NicheSummary(niche, result.success)
    for event in result.get_asset_materialization_events():
        key = event.asset_key.to_user_string()
        meta = event.materialization.metadata
        if key == "trending_videos":
            summary.source, summary.videos = _value(meta, "source"), _value(meta, "dagster/row_count")
        elif key == "thumbnail_embeddings":
            summary.embedded, summary.skipped = _value(meta, "embedded"), _value(meta, "skipped")
        elif key == "niche_index":
            summary.indexed = _value(meta, "ntotal")
        elif key == "published_index":
            summary.published = _value(meta, "published")
    for event in result.get_asset_observation_events():  # the tail records a skipped publish as an observation
        if event.asset_key == dg.AssetKey("published_index") and summary.published is None:
            summary.published = _value(event.asset_observation_data.asset_observation.metadata, "published")
    for evaluation in result.get_asset_check_evaluations():
        state = "pass" if evaluation.passed else ("WARN" if evaluation.severity == dg.AssetCheckSeverity.WARN else "FAIL")
        summary.checks[evaluation.check_name] = state
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        if failures:
            summary.error = f"{failures[0].step_key} failed: {root_cause(failures[0].step_failure_data)}"
    return summary


def root_cause(failure) -> str:
    """The first line of what went wrong in a step: a ``dg.Failure``'s description, else the message
    of the first exception under Dagster's "Error occurred while executing op" wrappers."""
    described = failure.user_failure_data.description if failure.user_failure_data else None
    if described:
        return _first_line(described)
    error = failure.error
    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    if error is None:
        return "failed (no error recorded)"
    # SerializableErrorInfo.message reads "package.module.ClassName: text"; keep the class's own name.
    head, sep, text = error.message.partition(": ")
    text = text if sep and head.endswith(error.cls_name) else error.message
    ours = head.startswith("thumblab_dagster.")
    return _first_line(text) if ours and text.strip() else f"{error.cls_name}: {_first_line(text)}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def format_table(date: str, summaries: list[NicheSummary]) -> str:
    def show(v):
        return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))

    head = ["niche", "ok", "source", "videos", "embedded", "skipped", "indexed", "published", "checks"]
    rows = []
    for s in summaries:
        passed = sum(v == "pass" for v in s.checks.values())
        flagged = [f"{k} {v}" for k, v in sorted(s.checks.items()) if v != "pass"]
        checks = f"{passed}/{len(s.checks)} passed" + (f" ({', '.join(flagged)})" if flagged else "")
        rows.append([s.niche, "yes" if s.success else "NO", s.source, show(s.videos), show(s.embedded),
                     show(s.skipped), show(s.indexed), show(s.published), checks])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"daily_refresh for {date} (Australia/Hobart)", ""]
    for r in [head, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    errors = [f"  {s.niche}: {s.error}" for s in summaries if s.error]
    if errors:
        lines += ["", "failures:", *errors]
    return "\n".join(lines)


def run_demo(date: str | None = None, niches=NICHES) -> tuple[str, list[NicheSummary]]:
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    from thumblab_dagster.definitions import build_definitions
    from thumblab_dagster.defs.resources import ThumbnailFetchResource, resources_from_env

    # In-process runs sleep through a RetryPolicy's delay (minutes): the demo fails at once and says why.
    resources = resources_from_env()
    fetch = resources["thumbnail_fetch"]
    resources["thumbnail_fetch"] = ThumbnailFetchResource(**{**fetch.model_dump(), "retry_later": False})
    defs = build_definitions(resources)

    date = date or today_in_hobart()
    job = defs.resolve_job_def("daily_refresh")
    summaries = []
    with dg.DagsterInstance.get() as instance:
        for niche in niches:
            result = job.execute_in_process(partition_key=f"{date}|{niche}", instance=instance,
                                            raise_on_error=False, tags={"thumblab/origin": "demo"},
                                            run_config=QUIET)
            summaries.append(summarise(niche, result))
    return format_table(date, summaries), summaries
