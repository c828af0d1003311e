"""Supabase and remote copies: the shared ref_thumbnails table, index files at an upload URL.

Both join the definitions (and so ``daily_refresh``) only when configured; see definitions.py.
"""

import dagster as dg

from thumblab_dagster.defs.resources import IndexUploadResource, StorageResource, SupabaseResource
from thumblab_dagster.defs.thumbnails.assets import GROUP, niche_index, thumbnail_embeddings
from thumblab_dagster.defs.thumbnails.partitions import date_and_niche, thumbnail_partitions
from thumblab_dagster.lib.collections.thumbnails.sync import mirror_in_sync, sync_partition
from thumblab_dagster.lib.stores.upload import upload_index_dir

SUPABASE_MIRROR_IN_SYNC = "supabase_mirror_in_sync"


def _closed(store) -> None:
    close = getattr(store, "close", None)
    if close:
        close()


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=[thumbnail_embeddings],
          kinds={"supabase", "postgres"})
def supabase_ref_thumbnails(context: dg.AssetExecutionContext, storage: StorageResource,
                            supabase: SupabaseResource) -> dg.MaterializeResult:
    """The partition's embedded rows upserted into Supabase's ref_thumbnails; rows past retention deleted."""
    date, niche = date_and_niche(context.partition_key)
    store = supabase.store()
    try:
        outcome = sync_partition(storage.layout, niche, date, store, retention_days=supabase.retention_days,
                                 batch_size=supabase.batch_size, log=context.log)
    finally:
        _closed(store)
    return dg.MaterializeResult(metadata={
        "rows_upserted": outcome.upserted,
        "rows_deleted": outcome.deleted,
        "niche_total": outcome.total,
        "retention_first_date": outcome.cutoff,
        "model": outcome.model,
        "store": store.name,
    })


@dg.asset_check(asset=supabase_ref_thumbnails, name=SUPABASE_MIRROR_IN_SYNC, additional_deps=[niche_index],
                partitions_def=thumbnail_partitions)
def supabase_mirror_in_sync(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                            supabase: SupabaseResource) -> dg.AssetCheckResult:
    """Warns when Supabase's ids within the 90-day window differ from the ids of that date's index."""
    date, niche = date_and_niche(context.partition_key)
    store = supabase.store()
    try:
        report = mirror_in_sync(storage.layout, niche, date, store)
    finally:
        _closed(store)
    return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.WARN, metadata={
        "index_ids": report.index_ids, "supabase_ids": report.store_ids,
        "missing_from_supabase": ", ".join(report.missing_from_store[:20]) or "none",
        "not_in_index": ", ".join(report.not_in_index[:20]) or "none"})


@dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=[niche_index], kinds={"faiss", "s3"})
def uploaded_index(context: dg.AssetExecutionContext, storage: StorageResource,
                   index_upload: IndexUploadResource) -> dg.MaterializeResult:
    """The verified index directory copied to the upload URL: <niche>/<date>/ and <niche>/latest/."""
    date, niche = date_and_niche(context.partition_key)
    result = upload_index_dir(storage.layout.index_dir(niche, date), index_upload.destination(), niche, date,
                              log=context.log)
    return dg.MaterializeResult(metadata={
        "destination": result.destination,
        "dated_copy": result.dated,
        "latest_copy": result.latest,
        "files": ", ".join(result.files),
        "bytes": result.bytes,
        "verified": "size and sha256 of every file, read back",
    })
