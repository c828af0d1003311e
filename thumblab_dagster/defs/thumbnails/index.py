"""The thumbnails' index tail: niche_index -> id_map_alignment -> index_recall -> published_index /
index_stats / uploaded_index, through the shared factory (defs/index_tail.py)."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.index_tail import Built, IndexTail, Measured, Published, index_tail
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded, search_quality, timestamp
from thumblab_dagster.defs.thumbnails.assets import thumbnail_embeddings
from thumblab_dagster.defs.thumbnails.partitions import (
    GROUP,
    OWNERS,
    TAGS,
    date_and_niche,
    reference_window_mapping,
    thumbnail_partitions,
    window_dates_for_input,
)
from thumblab_dagster.lib.collections.thumbnails import pipeline
from thumblab_dagster.lib.collections.thumbnails.pictures import niche_neighbour_sheet
from thumblab_dagster.lib.engine.index_dir import read_manifest
from thumblab_dagster.lib.query.snapshot import reference_count as references_of
from thumblab_dagster.lib.stores.upload import upload_index_dir


def _where(context):
    date, niche = date_and_niche(context.partition_key)
    return context.resources.storage.layout, niche, date


def build(context) -> Built:
    layout, niche, date = _where(context)
    engine = context.resources.index_engine
    dates = window_dates_for_input(context, "thumbnail_embeddings")
    outcome = pipeline.build_niche_index(layout, niche, date, dates, log=context.log, settings=engine.settings,
                                         store=engine.store())
    manifest = outcome.manifest
    tuning = manifest.get("tuning") or {}
    return Built(str(layout.index_dir(niche, date)), {
        ROW_COUNT: dg.MetadataValue.int(outcome.ntotal),
        "ntotal": outcome.ntotal,
        "dim": outcome.dim,
        "source": manifest.get("source", "parquet"),
        "file_size_bytes": outcome.file_bytes,
        "build_seconds": rounded(outcome.build_seconds, 3),
        "dates_covered": len(outcome.dates_used),
        "first_date": outcome.dates_used[0] if outcome.dates_used else "none",
        "excluded_dates": outcome.excluded_dates or "none",
        "factory": manifest["factory"],
        "search_params": str(manifest.get("search_params") or "none (exact)"),
        "recall_at_10_held_out": rounded(tuning.get("recall_at_k_held_out", 1.0)),
        "recall_at_10_lower_bound_95": rounded(tuning.get("recall_lower_bound_95", 1.0)),
        "memory_budget_bytes": manifest["memory_budget_bytes"],
        "title_reference_rows": (manifest.get("titles") or {}).get("rows", 0),
    })


def check_alignment(context):
    layout, niche, date = _where(context)
    return pipeline.check_niche_index(layout, niche, date, store=context.resources.index_engine.store())


def check_recall(context) -> dict:
    layout, niche, date = _where(context)
    return pipeline.check_niche_recall(layout, niche, date, store=context.resources.index_engine.store())


def publish(context) -> Published:
    layout, niche, date = _where(context)
    result = pipeline.publish_niche_index(layout, niche, date, mode=int(context.resources.storage.publish_mode, 8))
    return Published(result.published, result.reason, {"directory": dg.MetadataValue.path(str(layout.published))})


def measure(context) -> Measured:
    layout, niche, date = _where(context)
    stats, histogram = pipeline.compute_index_stats(layout, niche, date)
    pictures = {"nearest-neighbour similarity": histogram}
    sheet = niche_neighbour_sheet(layout, niche, date)
    if sheet is not None:
        pictures["neighbour sheet: sampled thumbnails (framed) and their nearest neighbours"] = sheet
    return Measured({
        ROW_COUNT: dg.MetadataValue.int(stats["ntotal"]),
        "ntotal": stats["ntotal"],
        "reference_count": stats["reference_count"],
        "dim": stats["dim"],
        "index_type": stats["index_type"],
        "file_size_bytes": stats["file_size_bytes"],
        "last_modified": timestamp(stats["last_modified"]),
        "build_seconds": rounded(stats["build_seconds"], 3),
        **search_quality(stats, layout.stats(niche, date)),
    }, pictures)


def reference_count(context) -> int:
    """How many references the built index's percentiles rank against (from its manifest)."""
    layout, niche, date = _where(context)
    return references_of(read_manifest(layout.index_dir(niche, date)))


def min_references(context) -> int:
    return context.resources.index_engine.min_references


def upload(context) -> dict:
    layout, niche, date = _where(context)
    result = upload_index_dir(layout.index_dir(niche, date), context.resources.index_upload.destination(), niche,
                              date, log=context.log)
    return {"destination": result.destination, "dated_copy": result.dated, "latest_copy": result.latest,
            "files": ", ".join(result.files), "bytes": result.bytes,
            "verified": "size and sha256 of every file, read back"}


def thumbnail_index_tail(extra_deps=()) -> IndexTail:
    """``extra_deps``: what must be materialised first when the index reads Supabase's table."""
    return IndexTail(
        group=GROUP, partitions_def=thumbnail_partitions,
        index_deps=[dg.AssetDep(thumbnail_embeddings, partition_mapping=reference_window_mapping), *extra_deps],
        build=build, check_alignment=check_alignment, check_recall=check_recall, publish=publish, measure=measure,
        upload=upload, reference_count=reference_count, min_references=min_references, owners=OWNERS, tags=TAGS,
        index_name="niche_index", published_name="published_index", stats_name="index_stats",
        upload_name="uploaded_index",
        descriptions={"index": "FAISS index over the niche's de-duplicated embeddings of the last 90 dates.",
                      "published": "The copy the scoring service loads (faiss_indices/<niche>.index + "
                                   "<niche>_ids.npy), newest date only, after id_map_alignment passes.",
                      "stats": "Size, search latency, self-retrieval and neighbour similarity of the niche "
                               "index, with a histogram and a neighbour sheet.",
                      "upload": "The verified index directory copied to the upload URL: <niche>/<date>/ "
                                "and <niche>/latest/."})


def thumbnail_index_defs(extra_deps=(), with_upload: bool = False):
    """(assets, checks) of the thumbnails' index tail."""
    return index_tail(thumbnail_index_tail(extra_deps), with_upload=with_upload)
