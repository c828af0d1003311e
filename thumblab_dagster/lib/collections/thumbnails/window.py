"""A niche's reference library: the de-duplicated rows of its last N dates of embeddings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.embed.clip import info_from_label, read_embeddings, read_title_embeddings

log = logging.getLogger(__name__)

# Columns kept beside each vector, in index row order (what the query side shows).
METADATA_COLUMNS = ["video_id", "title", "channel_title", "thumbnail_url", "views_per_hour",
                    "view_count", "published_at", "collected_at", "date"]


def window_dates(end_date: str, days: int) -> list[str]:
    """The ``days`` dates ending at ``end_date`` (inclusive), oldest first."""
    end = Date.fromisoformat(end_date)
    return [(end - timedelta(days=offset)).isoformat() for offset in range(days - 1, -1, -1)]


def _compat_key(info: dict) -> tuple:
    return (info.get("model"), info.get("pretrained"), bool(info.get("loaded")), info.get("dim"))


@dataclass
class Window:
    ids: list[str]
    vectors: np.ndarray
    metadata: pd.DataFrame
    embedding: dict
    dates_used: list[str]
    missing_dates: list[str] = field(default_factory=list)
    excluded_dates: dict[str, str] = field(default_factory=dict)
    # The titles' embeddings of the rows whose dates have them (files embedded before titles
    # were do not): the title percentile's reference, not row-aligned with ``ids``.
    title_vectors: np.ndarray | None = None


def load_window(layout: DataLayout, niche: str, dates: list[str], newest: str) -> Window:
    """Read ``dates`` of a niche's embeddings and keep each video's newest row.

    ``newest`` must exist (it is the partition being built); other missing dates are skipped.
    Dates embedded with a different model or weights than ``newest`` cannot share an index
    with it, so they are excluded and named in ``excluded_dates``.
    """
    dates = sorted(set(dates) | {newest})
    _, _, ref_info = read_embeddings(layout.embeddings(niche, newest))  # raises a clear error if absent
    frames, blocks, title_blocks, used, missing, excluded = [], [], [], [], [], {}
    for d in dates:
        path = layout.embeddings(niche, d)
        if not path.exists():
            missing.append(d)
            continue
        frame, vectors, info = read_embeddings(path)
        if _compat_key(info) != _compat_key(ref_info):
            excluded[d] = (f"embedded with {info.get('model')}/{info.get('pretrained')} "
                           f"(weights loaded: {info.get('loaded')}), {newest} with "
                           f"{ref_info.get('model')}/{ref_info.get('pretrained')} "
                           f"(weights loaded: {ref_info.get('loaded')})")
            continue
        frames.append(frame.assign(date=d))
        blocks.append(vectors)
        titles = read_title_embeddings(path)
        title_blocks.append(titles if titles is not None else np.full((len(frame), vectors.shape[1]), np.nan,
                                                                      dtype=np.float32))
        used.append(d)
    dim = int(ref_info["dim"])
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        vectors = np.concatenate(blocks) if blocks else np.empty((0, dim), np.float32)
    else:
        frame, vectors = pd.DataFrame(columns=METADATA_COLUMNS), np.empty((0, dim), np.float32)
    # Dates are sorted, so keep="last" keeps each video's newest row.
    keep = ~frame["video_id"].duplicated(keep="last").to_numpy()
    frame = frame.loc[keep].reset_index(drop=True)
    vectors = np.ascontiguousarray(vectors[keep], dtype=np.float32)
    titles = np.concatenate(title_blocks)[keep] if title_blocks else np.empty((0, dim), np.float32)
    titles = np.ascontiguousarray(titles[~np.isnan(titles).any(axis=1)], dtype=np.float32)
    metadata = frame.reindex(columns=METADATA_COLUMNS)
    return Window(ids=frame["video_id"].astype(str).tolist(), vectors=vectors, metadata=metadata,
                  embedding=ref_info, dates_used=used, missing_dates=missing, excluded_dates=excluded,
                  title_vectors=titles)


def load_window_from_store(store, niche: str, dates: list[str], newest: str) -> Window:
    """The same window read from the shared store's table (rows whose partition date is within ``dates``).

    A table already holds one row per video (upserts), so there is nothing to de-duplicate.
    Rows embedded by another model than the newest row (latest partition date, then collection
    time) cannot share its index: they are left out and counted in ``excluded_dates``.
    """
    dates = sorted(set(dates) | {newest})
    frame, vectors = store.rows_between_dates(niche, Date.fromisoformat(dates[0]), Date.fromisoformat(newest))
    if not len(frame):
        raise ValueError(f"{store.name} holds no {niche} rows of partitions {dates[0]}..{newest}: materialise "
                         "supabase_ref_thumbnails for those dates first")
    collected = pd.to_datetime(frame["collected_at"], utc=True)
    newest_row = frame.assign(collected=collected).sort_values(["partition_date", "collected"]).index[-1]
    model = frame.at[newest_row, "model"]
    keep = (frame["model"] == model).to_numpy()
    excluded = {} if keep.all() else {"other models": f"{int((~keep).sum())} rows embedded with another model "
                                                      f"than {model}"}
    frame = frame.loc[keep].reset_index(drop=True)
    frame["date"] = frame["partition_date"].astype(str)
    vectors = np.ascontiguousarray(vectors[keep], dtype=np.float32)
    used = sorted(frame["date"].unique())
    return Window(ids=frame["video_id"].astype(str).tolist(), vectors=vectors,
                  metadata=frame.reindex(columns=METADATA_COLUMNS),
                  embedding={**info_from_label(model), "dim": int(vectors.shape[1])}, dates_used=used,
                  missing_dates=[d for d in dates if d not in used], excluded_dates=excluded)
