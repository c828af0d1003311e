"""The catalogue index tail: catalogue_index -> id_map_alignment (the seed's checker) -> index_recall ->
published_catalogue / catalogue_stats / uploaded_catalogue, through the shared factory (defs/index_tail.py)."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.catalogue.assets import product_embeddings
from thumblab_dagster.defs.catalogue.where import GROUP, OWNERS, RESOURCES, TAGS, catalogue_partitions, where
from thumblab_dagster.defs.index_tail import Built, IndexTail, Measured, Published, index_tail, published_result
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded, search_quality
from thumblab_dagster.lib.collections.catalogue import pipeline

HOW = {"append": "appended (no retraining)", "unchanged": "unchanged (no new vectors)", "full": "full build"}


def build(context) -> Built:
    layout, name, settings = where(context)
    try:
        manifest, how = pipeline.build_index(layout, name, settings, log_to=context.log)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    return Built(str(layout.index_dir(name)), {
        ROW_COUNT: dg.MetadataValue.int(manifest.ntotal),
        "how": HOW[how],
        "products": manifest.ntotal,
        "shards": dg.MetadataValue.json([shard.count for shard in manifest.shards or []]),
        "shard_size": manifest.shard_size,
        "factory": manifest.factory,
        "dim": manifest.dim,
        "search_params": str(dict(manifest.search_params) or "none (exact)"),
        "build_seconds": rounded(manifest.build_seconds, 3),
    })


def check_alignment(context):
    layout, name, settings = where(context)
    lines = []
    report = pipeline.check(layout, name, context.resources.embedder.load(), sample=settings.check_sample,
                            out=lines.append)
    for line in lines[-5:]:
        context.log.info(line)
    return pipeline.as_alignment_report(report)


def check_recall(context) -> dict:
    layout, name, _ = where(context)
    return pipeline.check_recall(layout, name)


def publish(context) -> Published:
    layout, name, _ = where(context)
    result = pipeline.publish_catalogue(layout, name, mode=int(context.resources.storage.publish_mode, 8))
    return published_result(result, layout.catalogue(name))


def measure(context) -> Measured:
    layout, name, _ = where(context)
    stats, histogram = pipeline.catalogue_stats(layout, name)
    return Measured({
        ROW_COUNT: dg.MetadataValue.int(stats["products"]),
        "products": stats["products"], "shards": stats["shards"], "factory": stats["factory"],
        "per_brand": dg.MetadataValue.json(stats["per_brand"]), "total_bytes": stats["total_bytes"],
        **search_quality(stats, layout.stats(name)),
    }, {"nearest-neighbour similarity of products": histogram})


def upload(context) -> dict:
    layout, name, _ = where(context)
    result = pipeline.upload_catalogue(layout, name, context.resources.catalogue.destination(), log_to=context.log)
    return {"destination": result["destination"], "files": ", ".join(result["files"]), "bytes": result["bytes"],
            "verified": "size and sha256 of every file, read back; the id map last"}


def catalogue_index_tail() -> IndexTail:
    return IndexTail(
        group=GROUP, partitions_def=catalogue_partitions, index_deps=[product_embeddings], build=build,
        check_alignment=check_alignment, check_recall=check_recall, publish=publish, measure=measure, upload=upload,
        upload_resource="catalogue", resource_keys=RESOURCES, owners=OWNERS, tags=TAGS,
        index_name="catalogue_index", published_name="published_catalogue", stats_name="catalogue_stats",
        upload_name="uploaded_catalogue",
        descriptions={"index": "The catalogue's sharded index (shards of THUMBLAB_CATALOGUE_SHARD_SIZE); new products "
                               "appended without retraining, a full build when products left or images changed.",
                      "published": "faiss_indices/<catalogue>/ in the seed's names (clip_<name>_shard_00000.index, "
                                   "..., id_map_<name>.json), swapped in as one set after id_map_alignment passes.",
                      "upload": "The published set uploaded to Supabase Storage <BUCKET_NAME>/<PREFIX>/<catalogue>/, "
                                "every file read back and verified, the id map last."})


def catalogue_index_defs(with_upload: bool = False):
    return index_tail(catalogue_index_tail(), with_upload=with_upload)
