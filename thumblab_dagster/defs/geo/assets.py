"""The geo collection's own assets: pixel_store (the mosaic, every pixel) and viewport_preview (a picture of it).

The index tail (pixel_index -> checks -> published_viewport / viewport_stats) is in index.py;
viewport_preview hangs off pixel_store beside the index, so the multiprocess executor runs the
two in parallel and a failed preview never stops the viewport from being indexed and published.
"""

import dagster as dg

from thumblab_dagster.defs.geo.partitions import GROUP, OWNERS, TAGS, viewport_partitions
from thumblab_dagster.defs.geo.where import mosaic_of, where
from thumblab_dagster.defs.index_tail import lib_logs_to, not_materialised, pictures_md
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded
from thumblab_dagster.lib.collections.geo import pipeline
from thumblab_dagster.lib.collections.geo.mosaic import MosaicError

COMMON = dict(partitions_def=viewport_partitions, group_name=GROUP, owners=OWNERS, tags=TAGS)
RESOURCES = {"storage", "geo", "index_engine"}


@dg.asset(kinds={"geotiff", "numpy"}, code_version="1", output_required=False, required_resource_keys=RESOURCES,
          **COMMON)
def pixel_store(context: dg.AssetExecutionContext):
    """Every pixel of the viewport's mosaic as one byte a dimension (all_embeddings.npy), its nodata mask and norms.

    Not rebuilt (nothing materialised, nothing downstream runs) when the published viewport came
    from this very mosaic with the same build settings; every published file is left untouched."""
    layout, viewport_id, settings = where(context)
    mosaic = mosaic_of(layout, viewport_id)
    with lib_logs_to(context.log):   # the store's progress (every 5% of rows) reaches the event log
        reason = pipeline.skip_reason(layout, viewport_id, mosaic, settings)
        if reason:
            not_materialised(context, reason, {"skipped": True, "reason": reason, "mosaic": str(mosaic)})
            return
        try:
            meta = pipeline.build_store(layout, viewport_id, mosaic, settings)
        except (MosaicError, ValueError) as exc:   # a bad mosaic: its one line, no retries
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
    directory = layout.store_dir(viewport_id)
    sizes = {name: (directory / name).stat().st_size for name in meta["files"]}
    yield dg.MaterializeResult(metadata={
        ROW_COUNT: dg.MetadataValue.int(meta["num_total_pixels"]),
        "pixels": meta["num_total_pixels"],
        "nodata_pixels": meta["nodata_pixels"],
        "valid_pixels": meta["valid_pixels"],
        "sampled_pixels": meta["num_sampled_pixels"],
        "height": meta["mosaic_height"],
        "width": meta["mosaic_width"],
        "bands": meta["embedding_dim"],
        "bytes": sum(sizes.values()),
        "file_bytes": dg.MetadataValue.json(sizes),
        "dtype": f"{meta['storage_dtype']} (from {meta['source_dtype']}: {meta['dequantisation']['formula']})",
        "crs": meta["crs"],
        "pixel_size_meters": rounded(meta["pixel_size_meters"], 3),
        "fingerprint": meta["mosaic_fingerprint"],
        "mosaic": dg.MetadataValue.path(str(mosaic)),
        "path": dg.MetadataValue.path(str(directory)),
    })


@dg.asset(deps=[pixel_store], kinds={"geotiff", "png"}, code_version="1", required_resource_keys=RESOURCES,
          **COMMON)
def viewport_preview(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The viewport's embeddings in three PCA colours: a Cloud-Optimised GeoTIFF with overviews, and a PNG."""
    layout, viewport_id, _ = where(context)
    with lib_logs_to(context.log):
        made = pipeline.build_preview(layout, viewport_id)
    return dg.MaterializeResult(metadata={
        "preview": pictures_md({f"{viewport_id}: PCA of the embeddings as RGB": made.png_bytes}),
        "cog": dg.MetadataValue.path(str(made.tif)),
        "png": dg.MetadataValue.path(str(made.png)),
        "overviews": ", ".join(f"1/{f}" for f in made.overviews) or "none (small viewport)",
        "explained_variance": dg.MetadataValue.json([round(v, 4) for v in made.explained]),
        "fingerprint": made.fingerprint,
    })
