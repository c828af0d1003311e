"""The shared index tail: index -> id_map_alignment (blocking) -> index_recall (WARN) (+ enough_references
(WARN) when the collection counts references) -> published copy -> stats -> upload (when configured),
written once for every collection.

A collection hands ``index_tail`` an ``IndexTail``: its partitions, what the index depends on,
and small functions that do the work through lib/ (build, re-check, publish, measure, upload).
The factory owns the Dagster shape: names, blocking, severities, metadata, the engine's progress
in the event log, and never showing a publish that did not happen as a success.
"""


import base64
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

ID_MAP_ALIGNMENT = "id_map_alignment"
INDEX_RECALL = "index_recall"
ENOUGH_REFERENCES = "enough_references"
ENGINE_LOGGER = "thumblab_dagster.lib"  # every lib/ module logs under it (engine stages, fetches, stores)
DESCRIPTIONS = {
    "index": "The collection's FAISS index directory, built, tuned and checksummed by the engine.",
    "published": "The copy the query side loads; only after id_map_alignment passes, never older than what is there.",
    "stats": "Size, speed, self-retrieval and neighbour similarity of the index, with pictures.",
    "upload": "The checked index directory copied to the upload URL, every file read back and verified.",
}


@dataclass(frozen=True)
class Built:
    """What building an index produced: where it is and what the UI should show about it."""

    path: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Published:
    published: bool
    reason: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measured:
    """Index stats: figures (metadata) and pictures (name -> PNG bytes), shown inline as markdown."""

    metadata: Mapping[str, Any]
    pictures: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexTail:
    """One collection's index tail. Each function takes the asset's (or check's) context."""

    group: str
    partitions_def: dg.PartitionsDefinition | None
    index_deps: Sequence[Any]
    build: Callable[[Any], Built]
    check_alignment: Callable[[Any], Any]          # -> lib.engine.validate.AlignmentReport
    check_recall: Callable[[Any], dict]            # -> lib.engine.tune.verify_recall's dict
    publish: Callable[[Any], Published]
    measure: Callable[[Any], Measured]
    upload: Callable[[Any], Mapping[str, Any]] | None = None   # -> metadata; needs resource ``upload_resource``
    upload_resource: str = "index_upload"   # the resource that says where uploads go
    # -> why the index need not be built (what is published came from the same input and settings), or None.
    # With a reason the index is not materialised, the reason is an observation and an info line, and
    # everything after it in the run (checks, published copy, stats, upload) is skipped.
    skip: Callable[[Any], str | None] | None = None
    # With both: the enough_references WARN check (percentiles from fewer references are not confident).
    reference_count: Callable[[Any], int] | None = None        # -> references the built index's percentiles rank against
    min_references: Callable[[Any], int] | None = None         # -> the fewest for a confident percentile
    resource_keys: frozenset[str] = frozenset({"storage", "index_engine"})
    # Asset names; unset, they follow the group ("geo" -> geo_index, geo_published_index, ...) so two
    # collections never collide. Thumbnails keep their historical names.
    index_name: str = ""
    published_name: str = ""
    stats_name: str = ""
    upload_name: str = ""
    owners: Sequence[str] = ("team:thumblab",)
    tags: Mapping[str, str] = field(default_factory=dict)
    code_version: str = "1"
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for role, name in (("index", "index"), ("published", "published_index"), ("stats", "index_stats"),
                           ("upload", "uploaded_index")):
            if not getattr(self, f"{role}_name"):
                object.__setattr__(self, f"{role}_name", f"{self.group}_{name}")


def published_result(result, directory) -> Published:
    """An engine ``PublishResult`` as the tail's ``Published``: where it is, and the version it made."""
    return Published(result.published, result.reason,
                     {"directory": dg.MetadataValue.path(str(directory)),
                      **({"version": dg.MetadataValue.path(result.paths["version"])} if result.published else {})})


def upload_dir(context, directory, name: str) -> dict:
    """Upload a checked index directory to ``<name>/<build time>/`` and ``<name>/latest/``; the metadata."""
    from thumblab_dagster.lib.engine.index_dir import read_manifest
    from thumblab_dagster.lib.engine.publish import snapshot_of
    from thumblab_dagster.lib.stores.upload import upload_index_dir

    result = upload_index_dir(directory, context.resources.index_upload.destination(), name,
                              snapshot_of(read_manifest(directory)), log=context.log)
    return {"destination": result.destination, "dated_copy": result.dated, "latest_copy": result.latest,
            "files": ", ".join(result.files), "bytes": result.bytes,
            "verified": "size and sha256 of every file, read back"}


class _ToDagsterLog(logging.Handler):
    """Forwards lib/'s log records (engine progress: train, add, tune, reference) to the run's event log.

    Records at or above ``passthrough`` also go on to the parent loggers' handlers, as they would
    have without us; the INFO records we let through only for the event log do not.
    """

    def __init__(self, dagster_log, parent: logging.Logger | None, passthrough: int):
        super().__init__(logging.INFO)
        self.dagster_log, self.parent, self.passthrough = dagster_log, parent, passthrough

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not fail the build
            return
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info"
        getattr(self.dagster_log, level)(message)
        if self.parent is not None and record.levelno >= self.passthrough:
            self.parent.handle(record)


@contextlib.contextmanager
def lib_logs_to(dagster_log) -> Iterator[None]:
    """While the body runs, lib/'s INFO+ records also reach ``dagster_log`` (the UI's event log)."""
    logger = logging.getLogger(ENGINE_LOGGER)
    saved = (logger.level, logger.propagate)
    handler = _ToDagsterLog(dagster_log, logger.parent if logger.propagate else None, logger.getEffectiveLevel())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the handler passes on what would have propagated anyway
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def pictures_md(pictures: Mapping[str, bytes]) -> dg.MetadataValue:
    """PNG pictures as one markdown value (Dagster renders base64 images in markdown metadata)."""
    parts = [f"**{name}**\n\n![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"
             for name, png in pictures.items()]
    return dg.MetadataValue.md("\n\n".join(parts))


def observe(context, metadata: Mapping[str, Any]) -> None:
    """Record ``metadata`` about the asset as an observation (the asset was not materialised)."""
    context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_key
                                          if context.has_partition_key else None, metadata=dict(metadata)))


def not_materialised(context, reason: str, metadata: Mapping[str, Any]) -> None:
    """An asset that had nothing to do: an info line and an observation saying why."""
    context.log.info(reason)
    observe(context, metadata)


def _check_metadata(values: Mapping[str, Any]) -> dict:
    return {k: ("none" if v is None else round(v, 4) if isinstance(v, float) else
                v if isinstance(v, (int, str, bool)) else str(v)) for k, v in values.items()}


def index_tail(tail: IndexTail, *, with_upload: bool = False) -> tuple[list[dg.AssetsDefinition], list]:
    """The tail's assets and checks for one collection: (assets, asset_checks)."""
    common = dict(partitions_def=tail.partitions_def, group_name=tail.group, owners=list(tail.owners),
                  tags=dict(tail.tags), code_version=tail.code_version, required_resource_keys=set(tail.resource_keys))

    def about(role: str) -> str:
        return tail.descriptions.get(role, DESCRIPTIONS[role])

    def built_result(context) -> dg.MaterializeResult:
        with lib_logs_to(context.log):
            built = tail.build(context)
        return dg.MaterializeResult(metadata={**built.metadata, "path": dg.MetadataValue.path(built.path)})

    if tail.skip is None:
        @dg.asset(name=tail.index_name, deps=list(tail.index_deps), kinds={"faiss"}, description=about("index"),
                  **common)
        def index_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            return built_result(context)
    else:
        @dg.asset(name=tail.index_name, deps=list(tail.index_deps), kinds={"faiss"}, description=about("index"),
                  output_required=False, **common)
        def index_asset(context: dg.AssetExecutionContext):
            with lib_logs_to(context.log):
                reason = tail.skip(context)
            if reason:
                not_materialised(context, reason, {"skipped": True, "reason": reason})
                return
            yield built_result(context)

    check_common = dict(asset=index_asset, partitions_def=tail.partitions_def,
                        required_resource_keys=set(tail.resource_keys))

    @dg.asset_check(name=ID_MAP_ALIGNMENT, blocking=True, description="Every index row maps to the right id; "
                    "a failure keeps the index from being published.", **check_common)
    def id_map_alignment(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        with lib_logs_to(context.log):
            report = tail.check_alignment(context)
        for problem in report.problems:
            context.log.error(problem)
        return dg.AssetCheckResult(passed=report.passed, metadata={
            **_check_metadata(report.metrics), "problems": "\n".join(report.problems) or "none"})

    @dg.asset_check(name=INDEX_RECALL, description="Warns when an approximate index misses its target recall@10 "
                    "on fresh queries (exact indices pass).", **check_common)
    def index_recall(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        with lib_logs_to(context.log):
            result = tail.check_recall(context)
        description = (f"exact {result['factory']} index: recall 1.0 by construction" if result["exact"] else
                       f"recall@10 {result['recall']:.3f} vs target {result['target_recall']} "
                       f"with {result['search_params']}")
        return dg.AssetCheckResult(passed=bool(result["passed"]), severity=dg.AssetCheckSeverity.WARN,
                                   description=description, metadata=_check_metadata(result))

    checks = [id_map_alignment, index_recall]
    if tail.reference_count is not None and tail.min_references is not None:
        checks.append(_enough_references(tail, check_common))

    @dg.asset(name=tail.published_name, deps=[index_asset], kinds={"faiss"}, output_required=False,
              description=about("published"), **common)
    def published_asset(context: dg.AssetExecutionContext):
        with lib_logs_to(context.log):
            result = tail.publish(context)
        if result.published:
            context.log.info(result.reason)
            yield dg.MaterializeResult(metadata={"published": True, "reason": result.reason, **result.metadata})
            return
        # Nothing was published: no materialization (the UI must not show a success), the reason
        # recorded as an observation and a warning in the run's log.
        context.log.warning(f"not published: {result.reason}")
        observe(context, {"published": False, "reason": result.reason, **result.metadata})

    @dg.asset(name=tail.stats_name, deps=[index_asset], kinds={"faiss"}, description=about("stats"), **common)
    def stats_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with lib_logs_to(context.log):
            measured = tail.measure(context)
        pictures = {"pictures": pictures_md(measured.pictures)} if measured.pictures else {}
        return dg.MaterializeResult(metadata={**measured.metadata, **pictures})

    assets = [index_asset, published_asset, stats_asset]
    if with_upload and tail.upload is not None:
        @dg.asset(name=tail.upload_name, deps=[index_asset], kinds={"faiss"}, description=about("upload"),
                  **{**common, "required_resource_keys": common["required_resource_keys"] | {tail.upload_resource}})
        def upload_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            with lib_logs_to(context.log):
                return dg.MaterializeResult(metadata=dict(tail.upload(context)))

        assets.append(upload_asset)
    return assets, checks


def _enough_references(tail: IndexTail, check_common: dict):
    @dg.asset_check(name=ENOUGH_REFERENCES, description="Warns when the index holds fewer references than a "
                    "confident percentile needs (THUMBLAB_MIN_REFERENCES): its answers are flagged "
                    "confident: false. The index is still built and published.", **check_common)
    def enough_references(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        count, minimum = tail.reference_count(context), tail.min_references(context)
        enough = count >= minimum
        description = (f"{count} references (at least {minimum})" if enough else
                       f"only {count} references (fewer than {minimum}): percentiles from this index are "
                       "flagged not confident")
        return dg.AssetCheckResult(passed=enough, severity=dg.AssetCheckSeverity.WARN, description=description,
                                   metadata={"reference_count": count, "min_references": minimum})

    return enough_references
