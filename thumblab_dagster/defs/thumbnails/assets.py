"""Thumbnail Lab assets: trending videos -> CLIP embeddings -> niche index -> stats / published copy."""


import base64

import dagster as dg

from thumblab_dagster.defs.resources import (
    ClipEmbedderResource,
    IndexEngineResource,
    StorageResource,
    ThumbnailFetchResource,
    TrendingSourceResource,
)
from thumblab_dagster.defs.thumbnails.partitions import (
    date_and_niche,
    reference_window_mapping,
    thumbnail_partitions,
    window_dates_for_input,
)
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.trending import markdown_preview

GROUP = "thumbnails"


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, kinds={"youtube", "parquet"})
def trending_videos(context: dg.AssetExecutionContext, storage: StorageResource,
                    trending_source: TrendingSourceResource) -> dg.MaterializeResult:
    """The niche's most popular videos on the partition date (YouTube API or bundled sample)."""
    date, niche = date_and_niche(context.partition_key)
    outcome = pipeline.collect_trending(storage.layout, niche, date, trending_source.settings, log=context.log)
    return dg.MaterializeResult(metadata={
        "source": outcome.source,
        "row_count": outcome.rows,
        "warnings": "\n".join(outcome.warnings) or "none",
        "path": dg.MetadataValue.path(str(storage.layout.trending(niche, date))),
        "preview": dg.MetadataValue.md(markdown_preview(outcome.frame)),
    })


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=[trending_videos],
          kinds={"pytorch", "parquet"})
def thumbnail_embeddings(context: dg.AssetExecutionContext, storage: StorageResource,
                         embedder: ClipEmbedderResource,
                         thumbnail_fetch: ThumbnailFetchResource) -> dg.MaterializeResult:
    """L2-normalised CLIP image embeddings of the partition's thumbnails."""
    date, niche = date_and_niche(context.partition_key)
    clip = embedder.load()
    if not clip.weights.loaded:
        context.log.warning(f"CLIP runs on RANDOM-INITIALISED weights: {clip.weights.note}")
    outcome = pipeline.embed_thumbnails(storage.layout, niche, date, clip, thumbnail_fetch.settings,
                                        batch_size=embedder.batch_size, log=context.log)
    return dg.MaterializeResult(metadata={
        "embedded": outcome.embedded,
        "skipped": outcome.skipped,
        "skip_reasons": outcome.skip_reasons,
        "skipped_examples": "\n".join(outcome.skipped_examples) or "none",
        "model": outcome.weights["model"],
        "pretrained": outcome.weights["pretrained"],
        "weights_loaded": outcome.weights["loaded"],
        "weights_note": outcome.weights["note"] or "none",
        "dim": outcome.dim,
        "seconds": round(outcome.seconds, 2),
        "path": dg.MetadataValue.path(str(storage.layout.embeddings(niche, date))),
    })


def niche_index_asset(extra_deps=()) -> dg.AssetsDefinition:
    """``niche_index``; ``extra_deps`` when it builds from Supabase's table (which must be filled first)."""

    @dg.asset(name="niche_index", partitions_def=thumbnail_partitions, group_name=GROUP, kinds={"faiss"},
              deps=[dg.AssetDep(thumbnail_embeddings, partition_mapping=reference_window_mapping), *extra_deps])
    def niche_index(context: dg.AssetExecutionContext, storage: StorageResource,
                    index_engine: IndexEngineResource) -> dg.MaterializeResult:
        """FAISS index over the niche's de-duplicated embeddings of the last 90 dates."""
        date, niche = date_and_niche(context.partition_key)
        dates = window_dates_for_input(context, "thumbnail_embeddings")
        outcome = pipeline.build_niche_index(storage.layout, niche, date, dates, log=context.log,
                                             settings=index_engine.settings, store=index_engine.store())
        tuning = outcome.manifest.get("tuning") or {}
        return dg.MaterializeResult(metadata={
            "ntotal": outcome.ntotal,
            "dim": outcome.dim,
            "source": outcome.manifest.get("source", "parquet"),
            "file_size_bytes": outcome.file_bytes,
            "build_seconds": round(outcome.build_seconds, 4),
            "dates_covered": len(outcome.dates_used),
            "first_date": outcome.dates_used[0] if outcome.dates_used else "none",
            "excluded_dates": outcome.excluded_dates or "none",
            "factory": outcome.manifest["factory"],
            "search_params": str(outcome.manifest.get("search_params") or "none (exact)"),
            "recall_at_10_held_out": tuning.get("recall_at_k_held_out", 1.0),
            "memory_budget_bytes": outcome.manifest["memory_budget_bytes"],
            "title_reference_rows": (outcome.manifest.get("titles") or {}).get("rows", 0),
            "path": dg.MetadataValue.path(str(storage.layout.index_dir(niche, date))),
        })

    return niche_index


niche_index = niche_index_asset()


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=[niche_index], kinds={"faiss"})
def published_index(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """The copy the scoring service loads (faiss_indices/<niche>.index + <niche>_ids.npy), newest date only."""
    date, niche = date_and_niche(context.partition_key)
    result = pipeline.publish_niche_index(storage.layout, niche, date)
    (context.log.info if result.published else context.log.warning)(result.reason)
    return dg.MaterializeResult(metadata={
        "published": result.published,
        "reason": result.reason,
        "directory": dg.MetadataValue.path(str(storage.layout.published)),
    })


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=[niche_index], kinds={"faiss"})
def index_stats(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Size, search latency, self-retrieval and neighbour similarity of the niche index."""
    date, niche = date_and_niche(context.partition_key)
    stats, png = pipeline.compute_index_stats(storage.layout, niche, date)
    image = base64.b64encode(png).decode()
    quantiles = stats["nn_similarity_quantiles"]
    return dg.MaterializeResult(metadata={
        "ntotal": stats["ntotal"],
        "dim": stats["dim"],
        "index_type": stats["index_type"],
        "file_size_bytes": stats["file_size_bytes"],
        "last_modified": stats["last_modified"],
        "build_seconds": stats["build_seconds"],
        "latency_ms_p50": stats["latency_ms_p50"],
        "latency_ms_p99": stats["latency_ms_p99"],
        "self_retrieval_rate": stats["self_retrieval_rate"],
        "nn_similarity_quantiles": quantiles,
        "nn_similarity_histogram": dg.MetadataValue.md(f"![nearest-neighbour similarity](data:image/png;base64,{image})"),
        "path": dg.MetadataValue.path(str(storage.layout.stats(niche, date))),
    })


thumbnail_assets = [trending_videos, thumbnail_embeddings, niche_index, published_index, index_stats]
