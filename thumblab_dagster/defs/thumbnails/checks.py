"""The thumbnails' own asset checks. Names are constants; the index's checks (id_map_alignment,
index_recall) are the shared tail's, named in defs/index_tail.py."""


import dagster as dg

from thumblab_dagster.defs.resources import StorageResource
from thumblab_dagster.defs.thumbnails.assets import thumbnail_embeddings, trending_videos
from thumblab_dagster.defs.thumbnails.partitions import date_and_niche, thumbnail_partitions
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.trending import read_trending

EMBEDDINGS_VALID = "embeddings_valid"
EMBEDDING_WEIGHTS_PRETRAINED = "embedding_weights_pretrained"
TRENDING_NOT_EMPTY = "trending_not_empty"


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


collecting_checks = [embeddings_valid, embedding_weights_pretrained, trending_not_empty]
