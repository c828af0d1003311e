"""Supabase's shared ref_thumbnails table, kept in step with the thumbnails (only when configured).

Nothing here is at module level: ``definitions.py`` builds these only when a Supabase resource is
bound, so without Supabase the code location is the embedded default.
"""


import dagster as dg

from thumblab_dagster.defs.resources import StorageResource, SupabaseResource
from thumblab_dagster.defs.thumbnails.partitions import GROUP, OWNERS, TAGS, date_and_niche, thumbnail_partitions
from thumblab_dagster.lib.collections.thumbnails.sync import mirror_in_sync, sync_partition

SUPABASE_MIRROR_IN_SYNC = "supabase_mirror_in_sync"


def _closed(store) -> None:
    close = getattr(store, "close", None)
    if close:
        close()


def supabase_defs() -> tuple[list, list]:
    """(assets, checks): supabase_ref_thumbnails and its supabase_mirror_in_sync check."""

    @dg.asset(partitions_def=thumbnail_partitions, group_name=GROUP, deps=["thumbnail_embeddings"],
              kinds={"supabase", "postgres"}, owners=OWNERS, tags=TAGS, code_version="2")  # 2: rows carry partition_date
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
            "dagster/row_count": dg.MetadataValue.int(outcome.total),
            "rows_upserted": outcome.upserted,
            "rows_deleted": outcome.deleted,
            "niche_total": outcome.total,
            "retention_first_date": outcome.cutoff,
            "model": outcome.model,
            "store": store.name,
        })

    @dg.asset_check(asset=supabase_ref_thumbnails, name=SUPABASE_MIRROR_IN_SYNC, additional_deps=["niche_index"],
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

    return [supabase_ref_thumbnails], [supabase_mirror_in_sync]
