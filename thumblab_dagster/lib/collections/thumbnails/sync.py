"""Keeping the shared store's ``ref_thumbnails`` in step with the pipeline (no Dagster here).

``sync_partition`` upserts a partition's embedded rows (idempotent: the row's own collection
time is written, not now()) and then deletes the niche's rows older than the retention
window. ``mirror_in_sync`` compares the store's ids within the 90-day window with the ids of
that date's index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta

from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.niches import WINDOW_DAYS
from thumblab_dagster.lib.collections.thumbnails.trending import read_trending
from thumblab_dagster.lib.collections.thumbnails.window import day_bounds
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
    """The partition's embedded rows as store records, with the trending descriptions joined in."""
    frame, vectors, info = read_embeddings(layout.embeddings(niche, date))
    trending_path = layout.trending(niche, date)
    if trending_path.exists() and len(frame):
        descriptions = read_trending(trending_path).drop_duplicates("video_id").set_index("video_id")["description"]
        frame = frame.assign(description=frame["video_id"].map(descriptions))
    return to_records(frame, vectors, weights_label(info))


def retention_cutoff(date: str, retention_days: int) -> tuple[str, object]:
    """The first kept date and its Hobart midnight: the window is ``retention_days`` dates ending at ``date``."""
    first = (Date.fromisoformat(date) - timedelta(days=retention_days - 1)).isoformat()
    return first, day_bounds(first, first)[0]


def sync_partition(layout: DataLayout, niche: str, date: str, store: ReferenceStore, *, retention_days: int = 90,
                   batch_size: int = 500, log=_default_log) -> SyncOutcome:
    records = partition_records(layout, niche, date)
    log.info(f"upserting {len(records)} {niche} rows for {date} into {store.name} ({batch_size} per batch)")
    upserted = store.upsert(records, batch_size=batch_size)
    first, cutoff = retention_cutoff(date, retention_days)
    deleted = store.delete_older_than(niche, cutoff)
    if deleted:
        log.info(f"deleted {deleted} {niche} rows collected before {first} ({retention_days}-day retention)")
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
    """The store's ids collected within the window ending ``date`` equal the ids of ``date``'s index."""
    directory = layout.index_dir(niche, date)
    index_ids = set(id_array(read_ids(directory, read_manifest(directory))).tolist())  # whatever id layout the manifest says
    first = (Date.fromisoformat(date) - timedelta(days=window_days - 1)).isoformat()
    store_ids = store.ids_between(niche, *day_bounds(first, date))
    missing, extra = sorted(index_ids - store_ids), sorted(store_ids - index_ids)
    return MirrorReport(not missing and not extra, len(index_ids), len(store_ids), missing, extra)

