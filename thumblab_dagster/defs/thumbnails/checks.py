"""Asset checks. Names are constants so schedules, tests and the UI agree on them."""

import warnings

import dagster as dg

from thumblab_dagster.defs.resources import IndexEngineResource, StorageResource
from thumblab_dagster.defs.thumbnails.assets import niche_index, thumbnail_embeddings, trending_videos
from thumblab_dagster.defs.thumbnails.partitions import date_and_niche, thumbnail_partitions
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.trending import read_trending

# Partitioned checks are a Dagster preview feature; we want per-partition results in the UI.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning)

ID_MAP_ALIGNMENT = "id_map_alignment"
EMBEDDINGS_VALID = "embeddings_valid"
EMBEDDING_WEIGHTS_PRETRAINED = "embedding_weights_pretrained"
TRENDING_NOT_EMPTY = "trending_not_empty"
INDEX_RECALL = "index_recall"


@dg.asset_check(asset=niche_index, name=ID_MAP_ALIGNMENT, blocking=True, partitions_def=thumbnail_partitions)
def id_map_alignment(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                     index_engine: IndexEngineResource) -> dg.AssetCheckResult:
    """Every index row maps to the right video id; a failure keeps the index from being published.

    The window is re-read from where the index was built from: the parquet files, or Supabase's table.
    """
    date, niche = date_and_niche(context.partition_key)
    report = pipeline.check_niche_index(storage.layout, niche, date, store=index_engine.store())
    for problem in report.problems:
        context.log.error(problem)
    return dg.AssetCheckResult(passed=report.passed, metadata={
        **report.metrics, "problems": "\n".join(report.problems) or "none"})


@dg.asset_check(asset=niche_index, name=INDEX_RECALL, partitions_def=thumbnail_partitions)
def index_recall(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                 index_engine: IndexEngineResource) -> dg.AssetCheckResult:
    """Warns when an approximate index misses its target recall@10 on fresh queries (exact ones pass)."""
    date, niche = date_and_niche(context.partition_key)
    result = pipeline.check_niche_recall(storage.layout, niche, date, store=index_engine.store())
    description = (f"exact {result['factory']} index: recall 1.0 by construction" if result["exact"] else
                   f"recall@10 {result['recall']:.3f} vs target {result['target_recall']} with {result['search_params']}")
    return dg.AssetCheckResult(passed=result["passed"], severity=dg.AssetCheckSeverity.WARN, description=description,
                               metadata={k: v if v is not None else "none" for k, v in result.items()
                                         if k != "search_params"} | {"search_params": str(result["search_params"])})


@dg.asset_check(asset=thumbnail_embeddings, name=EMBEDDINGS_VALID, blocking=True,
                partitions_def=thumbnail_partitions)
def embeddings_valid(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    """Finite values, unit norm (within 1e-3), one dimension throughout, no duplicate video ids."""
    date, niche = date_and_niche(context.partition_key)
    validity = pipeline.validate_embeddings(storage.layout, niche, date)
    return dg.AssetCheckResult(passed=not validity.problems, metadata={
        "rows": validity.rows, "dim": validity.dim, "problems": "\n".join(validity.problems) or "none"})


@dg.asset_check(asset=thumbnail_embeddings, name=EMBEDDING_WEIGHTS_PRETRAINED,
                partitions_def=thumbnail_partitions)
def embedding_weights_pretrained(context: dg.AssetCheckExecutionContext,
                                 storage: StorageResource) -> dg.AssetCheckResult:
    """Warns when the embeddings were made with random-initialised weights."""
    date, niche = date_and_niche(context.partition_key)
    info = pipeline.embedding_weights(storage.layout, niche, date)
    return dg.AssetCheckResult(
        passed=bool(info.get("loaded")), severity=dg.AssetCheckSeverity.WARN,
        description=None if info.get("loaded") else "embeddings come from RANDOM-INITIALISED weights",
        metadata={"model": info.get("model"), "pretrained": info.get("pretrained"),
                  "source": info.get("source"), "note": info.get("note") or "none"})


@dg.asset_check(asset=trending_videos, name=TRENDING_NOT_EMPTY, partitions_def=thumbnail_partitions)
def trending_not_empty(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    """Warns when the chart returned no videos for the partition."""
    date, niche = date_and_niche(context.partition_key)
    rows = len(read_trending(storage.layout.trending(niche, date)))
    return dg.AssetCheckResult(passed=rows > 0, severity=dg.AssetCheckSeverity.WARN, metadata={"rows": rows})


thumbnail_checks = [id_map_alignment, index_recall, embeddings_valid, embedding_weights_pretrained, trending_not_empty]
