"""Thumbnail Lab's collecting assets: trending videos -> CLIP embeddings (the index tail is in index.py)."""


import dagster as dg

from thumblab_dagster.defs.metadata import parquet_metadata, rounded
from thumblab_dagster.defs.resources import (
    ClipEmbedderResource,
    StorageResource,
    ThumbnailFetchResource,
    TrendingSourceResource,
)
from thumblab_dagster.defs.thumbnails.partitions import GROUP, OWNERS, TAGS, date_and_niche, thumbnail_partitions
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.trending import markdown_preview

COMMON = dict(partitions_def=thumbnail_partitions, group_name=GROUP, owners=OWNERS, tags=TAGS)


@dg.asset(kinds={"youtube", "parquet"}, code_version="1", **COMMON)
def trending_videos(context: dg.AssetExecutionContext, storage: StorageResource,
                    trending_source: TrendingSourceResource) -> dg.MaterializeResult:
    """The niche's most popular videos on the partition date (YouTube API or bundled sample)."""
    date, niche = date_and_niche(context.partition_key)
    outcome = pipeline.collect_trending(storage.layout, niche, date, trending_source.settings, log=context.log)
    return dg.MaterializeResult(metadata={
        **parquet_metadata(storage.layout.trending(niche, date)),
        "source": outcome.source,
        "warnings": "\n".join(outcome.warnings) or "none",
        "preview": dg.MetadataValue.md(markdown_preview(outcome.frame)),
    })


@dg.asset(deps=[trending_videos], kinds={"pytorch", "parquet"}, code_version="1", **COMMON)
def thumbnail_embeddings(context: dg.AssetExecutionContext, storage: StorageResource,
                         embedder: ClipEmbedderResource,
                         thumbnail_fetch: ThumbnailFetchResource) -> dg.MaterializeResult:
    """L2-normalised CLIP image (and title) embeddings of the partition's thumbnails."""
    date, niche = date_and_niche(context.partition_key)
    clip = embedder.load()
    if not clip.weights.loaded:
        context.log.warning(f"CLIP runs on RANDOM-INITIALISED weights: {clip.weights.note}")
    outcome = pipeline.embed_thumbnails(storage.layout, niche, date, clip, thumbnail_fetch.settings,
                                        batch_size=embedder.batch_size, log=context.log)
    return dg.MaterializeResult(metadata={
        **parquet_metadata(storage.layout.embeddings(niche, date)),
        "embedded": outcome.embedded,
        "skipped": outcome.skipped,
        "skip_reasons": outcome.skip_reasons,
        "skipped_examples": "\n".join(outcome.skipped_examples) or "none",
        "model": outcome.weights["model"],
        "pretrained": outcome.weights["pretrained"],
        "weights_loaded": outcome.weights["loaded"],
        "weights_note": outcome.weights["note"] or "none",
        "dim": outcome.dim,
        "seconds": rounded(outcome.seconds, 2),
    })
