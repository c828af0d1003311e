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
from thumblab_dagster.lib.collections.thumbnails.trending import ChartUnavailableError, markdown_preview
from thumblab_dagster.lib.collections.thumbnails.youtube import YouTubeError, YouTubeKeyError, YouTubeQuotaError

COMMON = dict(partitions_def=thumbnail_partitions, group_name=GROUP, owners=OWNERS, tags=TAGS)


@dg.asset(kinds={"youtube", "parquet"}, code_version="1", **COMMON)
def trending_videos(context: dg.AssetExecutionContext, storage: StorageResource,
                    trending_source: TrendingSourceResource) -> dg.MaterializeResult:
    """The niche's most popular videos on the partition date (YouTube API or bundled sample).

    YouTube's chart is always today's: with the API, a date past the live window reuses its
    trending file, or fails at once without one (nothing written, no retries)."""
    date, niche = date_and_niche(context.partition_key)
    try:
        outcome = pipeline.collect_trending(storage.layout, niche, date, trending_source.settings, log=context.log)
    except (ChartUnavailableError, YouTubeError) as exc:
        # The UI and `thumblab demo` show the description itself; waiting helps only a transport failure.
        final = isinstance(exc, (ChartUnavailableError, YouTubeQuotaError, YouTubeKeyError))
        raise dg.Failure(description=str(exc), allow_retries=not final) from exc
    return dg.MaterializeResult(metadata={
        **parquet_metadata(storage.layout.trending(niche, date)),
        "source": outcome.source,
        "reused": outcome.reused,
        "warnings": "\n".join(outcome.warnings) or "none",
        "preview": dg.MetadataValue.md(markdown_preview(outcome.frame)),
    })


# A partition that failed in transport (the CDN or the network was down) is tried again later:
# 3, then 6 minutes on. Content failures raise a Failure that Dagster does not retry.
FETCH_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=180, backoff=dg.Backoff.EXPONENTIAL)


@dg.asset(deps=[trending_videos], kinds={"pytorch", "parquet"}, code_version="1", retry_policy=FETCH_RETRY_POLICY,
          **COMMON)
def thumbnail_embeddings(context: dg.AssetExecutionContext, storage: StorageResource,
                         embedder: ClipEmbedderResource,
                         thumbnail_fetch: ThumbnailFetchResource) -> dg.MaterializeResult:
    """L2-normalised CLIP image (and title) embeddings of the partition's thumbnails.

    Fails, writing nothing, when more than ``max_failed_share`` of the thumbnails fail in transport
    (the RetryPolicy runs it again later) or when every thumbnail is broken.
    """
    date, niche = date_and_niche(context.partition_key)
    clip = embedder.load()
    if not clip.weights.loaded:
        context.log.warning(f"CLIP runs on RANDOM-INITIALISED weights: {clip.weights.note}")
    try:
        outcome = pipeline.embed_thumbnails(storage.layout, niche, date, clip, thumbnail_fetch.settings,
                                            batch_size=embedder.batch_size, log=context.log)
    except pipeline.TransportFailuresError as exc:  # one line in the UI, not a traceback
        raise dg.Failure(description=str(exc), allow_retries=thumbnail_fetch.retry_later,
                         metadata={"fetch_failures_by_kind": exc.failures_by_kind}) from exc
    except pipeline.NothingToEmbedError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    return dg.MaterializeResult(metadata={
        **parquet_metadata(storage.layout.embeddings(niche, date)),
        "embedded": outcome.embedded,
        "skipped": outcome.skipped,
        "skip_reasons": outcome.skip_reasons,
        "fetch_failures_by_kind": outcome.fetch_failures_by_kind,
        "skipped_examples": "\n".join(outcome.skipped_examples) or "none",
        "model": outcome.weights["model"],
        "pretrained": outcome.weights["pretrained"],
        "weights_loaded": outcome.weights["loaded"],
        "weights_note": outcome.weights["note"] or "none",
        "precision": outcome.weights.get("precision", "fp32"),
        "precision_note": outcome.weights.get("precision_note") or "none",
        "dim": outcome.dim,
        "seconds": rounded(outcome.seconds, 2),
    })
