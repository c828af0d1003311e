"""The music index tail: music_index -> id_map_alignment -> index_recall -> published_music_library /
music_library_stats / uploaded_music_library, through the shared factory (defs/index_tail.py)."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.index_tail import Built, IndexTail, Measured, Published, index_tail, published_result, upload_dir
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded, search_quality
from thumblab_dagster.defs.music.assets import track_analysis
from thumblab_dagster.defs.music.where import GROUP, LIBRARY, OWNERS, RESOURCES, TAGS, layout_and_settings, music_store
from thumblab_dagster.lib.collections.music import pipeline


def skip(context) -> str | None:
    with music_store(context) as (layout, store, settings):
        return pipeline.skip_reason(layout, store, LIBRARY, settings, context.resources.music.force_rebuild)


def build(context) -> Built:
    with music_store(context) as (layout, store, settings):
        try:
            manifest = pipeline.build_index(layout, store, LIBRARY, settings)
        except ValueError as exc:   # nothing analysed yet: its one line, no retries
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
    tuning = manifest.tuning
    return Built(str(layout.index_dir(LIBRARY)), {
        ROW_COUNT: dg.MetadataValue.int(manifest.ntotal),
        "tracks": manifest.ntotal,
        "dim": manifest.dim,
        "factory": manifest.factory,
        "feature_groups": dg.MetadataValue.json(manifest.get("music_features", {}).get("groups", {})),
        "weights": dg.MetadataValue.json(settings.weights or {}),
        "search_params": str(dict(manifest.search_params) or "none (exact)"),
        "recall_at_10_held_out": rounded(tuning.recall_at_k_held_out if tuning else 1.0),
        "build_seconds": rounded(manifest.build_seconds, 3),
    })


def check_alignment(context):
    with music_store(context) as (layout, store, settings):
        return pipeline.check_alignment(layout, store, LIBRARY, settings)


def check_recall(context) -> dict:
    layout, _ = layout_and_settings(context)
    return pipeline.check_recall(layout, LIBRARY)


def publish(context) -> Published:
    with music_store(context) as (layout, store, _):
        result = pipeline.publish_library(layout, store, LIBRARY, mode=int(context.resources.storage.publish_mode, 8))
    return published_result(result, layout.library(LIBRARY))


def measure(context) -> Measured:
    with music_store(context) as (layout, store, _):
        stats, histogram = pipeline.library_stats(layout, store, LIBRARY)
    return Measured({
        ROW_COUNT: dg.MetadataValue.int(stats["indexed_vectors"]),
        **{key: stats[key] for key in ("total_files", "analyzed_files", "indexed_files", "index_coverage",
                                       "vector_dimension", "index_type")},
        **search_quality(stats, layout.stats(LIBRARY)),
    }, {"nearest-neighbour similarity of tracks": histogram})


def upload(context) -> dict:
    layout, _ = layout_and_settings(context)
    return upload_dir(context, layout.index_dir(LIBRARY), LIBRARY)


def music_index_tail() -> IndexTail:
    return IndexTail(
        group=GROUP, partitions_def=None, index_deps=[track_analysis], build=build,
        check_alignment=check_alignment, check_recall=check_recall, publish=publish, measure=measure, upload=upload,
        skip=skip, resource_keys=RESOURCES, owners=OWNERS, tags=TAGS,
        index_name="music_index", published_name="published_music_library", stats_name="music_library_stats",
        upload_name="uploaded_music_library",
        descriptions={"index": "Every analysed track as a standardised, L2-normalised feature vector (67-d with "
                               "MusiCNN, 17-d without) in the engine's index; ids are file ids. Not rebuilt when the "
                               "analysed set and settings match the published library (music.force_rebuild).",
                      "published": "The library the query side loads (faiss_indices/music/), swapped in as one set "
                                   "after id_map_alignment passes; the database's id map follows it.",
                      "stats": "Coverage (indexed / analysed files), size, speed and neighbour similarity of the "
                               "library, with a histogram."})


def music_index_defs(with_upload: bool = False):
    """(assets, checks) of the music index tail."""
    return index_tail(music_index_tail(), with_upload=with_upload)
