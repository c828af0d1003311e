"""Keeping the shared store's ``ref_thumbnails`` in step with the pipeline (no Dagster here).

``sync_partition`` upserts a partition's embedded rows, each stamped with the partition's date
(idempotent: the row's own collection time is written, not now()), and then deletes the niche's
rows whose partition date is before the retention window. ``mirror_in_sync`` compares the store's
ids of the 90 partition dates ending at the date with the ids of that date's index. Both key on
the partition date, never on the wall clock: a late run of an old date keeps that date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta

from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.niches import WINDOW_DAYS
from thumblab_dagster.lib.collections.thumbnails.trending import read_trending
from thumblab_dagster.lib.embed.clip import read_embeddings, weights_label
from thumblab_dagster.lib.engine.ids import id_array, read_ids
from thumblab_dagster.lib.engine.manifest import read_manifest
from thumblab_dagster.lib.stores.supabase import ReferenceStore, to_records

_default_log = logging.getLogger(__name__)


@dataclass
class SyncOutcome:
    upserted: int
    deleted: int
    total: int
    cutoff: str
    model: str


def partition_records(layout: DataLayout, niche: str, date: str) -> list[dict]:
    """The partition's embedded rows as store records for ``date``, with the trending descriptions joined in."""
    frame, vectors, info = read_embeddings(layout.embeddings(niche, date))
    trending_path = layout.trending(niche, date)
    if trending_path.exists() and len(frame):
        descriptions = read_trending(trending_path).drop_duplicates("video_id").set_index("video_id")["description"]
        frame = frame.assign(description=frame["video_id"].map(descriptions))
    return to_records(frame, vectors, weights_label(info), partition_date=date)


def first_date(date: str, days: int) -> str:
    """The first of the ``days`` partition dates ending at ``date``."""
    return (Date.fromisoformat(date) - timedelta(days=days - 1)).isoformat()


def sync_partition(layout: DataLayout, niche: str, date: str, store: ReferenceStore, *, retention_days: int = 90,
                   batch_size: int = 500, log=_default_log) -> SyncOutcome:
    records = partition_records(layout, niche, date)
    log.info(f"upserting {len(records)} {niche} rows for {date} into {store.name} ({batch_size} per batch)")
    upserted = store.upsert(records, batch_size=batch_size)
    first = first_date(date, retention_days)
    deleted = store.delete_before(niche, Date.fromisoformat(first))
    if deleted:
        log.info(f"deleted {deleted} {niche} rows of partitions before {first} ({retention_days}-day retention)")
    model = records[0]["model"] if records else "none"
    return SyncOutcome(upserted, deleted, store.count(niche), first, model)


@dataclass
class MirrorReport:
    passed: bool
    index_ids: int
    store_ids: int
    missing_from_store: list[str] = field(default_factory=list)
    not_in_index: list[str] = field(default_factory=list)


def mirror_in_sync(layout: DataLayout, niche: str, date: str, store: ReferenceStore,
                   window_days: int = WINDOW_DAYS) -> MirrorReport:
    """The store's ids of the partition dates in the window ending ``date`` equal the ids of ``date``'s index."""
    directory = layout.index_dir(niche, date)
    index_ids = set(id_array(read_ids(directory, read_manifest(directory))).tolist())  # whatever id layout the manifest says
    store_ids = store.ids_between_dates(niche, Date.fromisoformat(first_date(date, window_days)),
                                        Date.fromisoformat(date))
    missing, extra = sorted(index_ids - store_ids), sorted(store_ids - index_ids)
    return MirrorReport(not missing and not extra, len(index_ids), len(store_ids), missing, extra)

