"""The geo index tail: pixel_index -> id_map_alignment -> index_recall -> published_viewport / viewport_stats
/ uploaded_viewport, through the shared factory (defs/index_tail.py)."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.geo.assets import pixel_store
from thumblab_dagster.defs.geo.partitions import GROUP, OWNERS, TAGS, viewport_partitions
from thumblab_dagster.defs.geo.where import where
from thumblab_dagster.defs.index_tail import Built, IndexTail, Measured, Published, index_tail, published_result, upload_dir
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded, search_quality
from thumblab_dagster.lib.collections.geo import pipeline
from thumblab_dagster.lib.collections.geo.discovery import UnknownViewportError, find_mosaic
from thumblab_dagster.lib.engine.validate import AlignmentReport


def skip(context) -> str | None:
    layout, viewport_id, settings = where(context)
    return pipeline.index_skip_reason(layout, viewport_id, settings)


def build(context) -> Built:
    layout, viewport_id, settings = where(context)
    manifest = pipeline.build_index(layout, viewport_id, settings)
    tuning = manifest.tuning
    return Built(str(layout.index_dir(viewport_id)), {
        ROW_COUNT: dg.MetadataValue.int(manifest.ntotal),
        "sampled_pixels": manifest.ntotal,
        "dim": manifest.dim,
        "factory": manifest.factory,
        "search_params": str(dict(manifest.search_params) or "none (exact)"),
        "recall_at_10_held_out": rounded(tuning.recall_at_k_held_out if tuning else 1.0),
        "recall_at_10_lower_bound_95": rounded(tuning.recall_lower_bound_95 if tuning else 1.0),
        "build_seconds": rounded(manifest.build_seconds, 3),
        "file_size_bytes": sum(entry.bytes for entry in manifest.files.values()),
        "memory_budget_bytes": manifest.memory_budget_bytes,
    })


def check_alignment(context):
    layout, viewport_id, _ = where(context)
    try:
        mosaic = find_mosaic(layout.mosaic_dir, viewport_id)
    except UnknownViewportError as exc:   # the stored pixels cannot be compared with a mosaic that is gone
        return AlignmentReport(False, [str(exc)])
    return pipeline.check_alignment(layout, viewport_id, mosaic)


def check_recall(context) -> dict:
    layout, viewport_id, _ = where(context)
    return pipeline.check_recall(layout, viewport_id)


def publish(context) -> Published:
    layout, viewport_id, _ = where(context)
    result = pipeline.publish_viewport(layout, viewport_id, mode=int(context.resources.storage.publish_mode, 8))
    return published_result(result, layout.viewport(viewport_id))


def measure(context) -> Measured:
    layout, viewport_id, _ = where(context)
    stats, histogram = pipeline.viewport_stats(layout, viewport_id)
    return Measured({
        ROW_COUNT: dg.MetadataValue.int(stats["sampled_pixels"]),
        "pixels": stats["pixels"],
        "nodata_pixels": stats["nodata_pixels"],
        "sampled_pixels": stats["sampled_pixels"],
        "factory": stats["factory"],
        "total_bytes": stats["total_bytes"],
        "threshold_search_ms": rounded(stats["threshold_search_ms"], 2),
        **search_quality(stats, layout.stats(viewport_id)),
    }, {"nearest-neighbour similarity of sampled pixels": histogram})


def upload(context) -> dict:
    layout, viewport_id, _ = where(context)
    return upload_dir(context, layout.index_dir(viewport_id), viewport_id)


def geo_index_tail() -> IndexTail:
    return IndexTail(
        group=GROUP, partitions_def=viewport_partitions, index_deps=[pixel_store], build=build,
        check_alignment=check_alignment, check_recall=check_recall, publish=publish, measure=measure, upload=upload,
        skip=skip, resource_keys=frozenset({"storage", "index_engine", "geo"}), owners=OWNERS, tags=TAGS,
        index_name="pixel_index", published_name="published_viewport", stats_name="viewport_stats",
        upload_name="uploaded_viewport",
        descriptions={"index": "The engine's index over the viewport's grid sample (every F-th pixel), with the "
                               "pixel store and metadata.json beside it under one manifest.",
                      "published": "The viewport the query side loads (faiss_indices/<viewport_id>/: "
                                   "embeddings.index, all_embeddings.npy, nodata_mask.npy, norms.npy, metadata.json, "
                                   "manifest.json), swapped in as one set after id_map_alignment passes.",
                      "stats": "Size, search latency, exact threshold-search time and neighbour similarity of "
                               "the viewport, with a histogram.",
                      "upload": "The verified viewport directory copied to the upload URL: <viewport_id>/<build "
                                "time>/ and <viewport_id>/latest/."})


def geo_index_defs(with_upload: bool = False):
    """(assets, checks) of the geo index tail."""
    return index_tail(geo_index_tail(), with_upload=with_upload)
