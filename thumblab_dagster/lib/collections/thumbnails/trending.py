"""The trending-videos table: one schema, whichever source filled it; and which dates the live
chart can still fill (YouTube's mostPopular chart is always *today's*)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd

from thumblab_dagster.lib.collections.thumbnails.niches import TIMEZONE

TRENDING_COLUMNS = [
    "video_id", "niche", "category_id", "title", "channel_title", "description",
    "published_at", "view_count", "views_per_hour", "thumbnail_url", "collected_at",
]

# YouTube's thumbnail keys from largest to smallest.
_THUMBNAIL_PREFERENCE = ("maxres", "standard", "high", "medium", "default")


def best_thumbnail_url(thumbnails: dict) -> str | None:
    """The URL of the largest thumbnail offered (by declared width, then by YouTube's names)."""
    if not thumbnails:
        return None
    sized = [(t.get("width") or 0, t.get("height") or 0, t.get("url")) for t in thumbnails.values()
             if isinstance(t, dict) and t.get("url")]
    if sized and any(w for w, _, _ in sized):
        return max(sized, key=lambda s: (s[0] * s[1], s[0]))[2]
    for key in _THUMBNAIL_PREFERENCE:
        if thumbnails.get(key, {}).get("url"):
            return thumbnails[key]["url"]
    return sized[0][2] if sized else None


def views_per_hour(view_count: int, published_at: datetime, collected_at: datetime) -> float:
    """Views divided by hours since publishing, with a floor of one hour."""
    hours = (collected_at - published_at).total_seconds() / 3600.0
    return float(view_count) / max(hours, 1.0)


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def frame_from_items(items: list[dict], niche: str, category_id: str,
                     collected_at: datetime) -> pd.DataFrame:
    """Turn YouTube ``videos`` resources (snippet + statistics) into the trending table.

    Items without an id or a thumbnail are dropped; a repeated id keeps its first row.
    """
    rows = []
    for item in items:
        snippet = item.get("snippet") or {}
        stats = item.get("statistics") or {}
        video_id = item.get("id")
        url = best_thumbnail_url(snippet.get("thumbnails") or {})
        if not video_id or not url:
            continue
        published = parse_time(snippet["publishedAt"]) if snippet.get("publishedAt") else collected_at
        views = int(stats.get("viewCount") or 0)
        rows.append({
            "video_id": str(video_id),
            "niche": niche,
            "category_id": str(snippet.get("categoryId") or category_id),
            "title": snippet.get("title") or "",
            "channel_title": snippet.get("channelTitle") or "",
            "description": snippet.get("description") or "",
            "published_at": published,
            "view_count": views,
            "views_per_hour": views_per_hour(views, published, collected_at),
            "thumbnail_url": url,
            "collected_at": collected_at,
        })
    frame = pd.DataFrame(rows, columns=TRENDING_COLUMNS)
    frame = frame.drop_duplicates("video_id", keep="first").reset_index(drop=True)
    for col in ("published_at", "collected_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame.astype({"view_count": "int64", "views_per_hour": "float64"})


def markdown_preview(frame: pd.DataFrame, rows: int = 10) -> str:
    if frame.empty:
        return "_no videos_"
    head = frame.head(rows)
    lines = ["| video_id | title | channel | views | views/hour |", "|---|---|---|---:|---:|"]
    for r in head.itertuples():
        title = str(r.title).replace("|", "\\|")[:60]
        channel = str(r.channel_title).replace("|", "\\|")[:30]
        lines.append(f"| {r.video_id} | {title} | {channel} | {r.view_count:,} | {r.views_per_hour:,.0f} |")
    if len(frame) > rows:
        lines.append(f"\n_{len(frame) - rows} more rows_")
    return "\n".join(lines)


def write_trending(path, frame: pd.DataFrame, source: str):
    """Write the trending table atomically, recording which source filled it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thumblab_dagster.lib.engine.files import atomic_path

    table = pa.Table.from_pandas(frame.reindex(columns=TRENDING_COLUMNS), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: source.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_trending(path) -> pd.DataFrame:
    from pathlib import Path

    if not Path(path).exists():
        raise FileNotFoundError(f"trending file {path} does not exist: materialise trending_videos "
                                "for that partition first")
    return pd.read_parquet(path)


SOURCE_KEY = b"thumblab.source"  # the parquet schema metadata entry naming the source that filled the file


def recorded_source(path) -> str | None:
    """The source recorded in an existing trending file (``"unknown"`` when it names none), else None."""
    from pathlib import Path

    import pyarrow.parquet as pq

    if not Path(path).exists():
        return None
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(SOURCE_KEY, b"unknown").decode()


class ChartUnavailableError(RuntimeError):
    """The live chart cannot fill this date: it only ever shows today's videos."""


def today_in(zone: str = TIMEZONE) -> str:
    return datetime.now(ZoneInfo(zone)).date().isoformat()


@dataclass(frozen=True)
class LiveWindow:
    """The partition dates the live API may collect now: today (Australia/Hobart) and, for late
    runs, ``grace_days`` before it. Anything else would store today's chart under another date."""

    today: str
    grace_days: int = 0

    @classmethod
    def now(cls, grace_days: int = 0, today: str | None = None) -> LiveWindow:
        return cls(today or today_in(), grace_days)

    @property
    def first(self) -> str:
        return (Date.fromisoformat(self.today) - timedelta(days=self.grace_days)).isoformat()

    def __contains__(self, date: str) -> bool:
        return self.first <= date <= self.today  # ISO dates compare as strings

    def refusal(self, date: str) -> str:
        """The one line for a date the live chart cannot fill and no file holds."""
        reach = f"late runs reach back to {self.first} only" if self.grace_days else "late runs are not allowed"
        return (f"YouTube's chart is only available for today ({self.today} in {TIMEZONE}); {date} can't be collected "
                f"now: it has no trending file to reuse, and {reach} (THUMBLAB_LIVE_GRACE_DAYS={self.grace_days}). "
                "Materialise recent dates only, or unset YOUTUBE_API_KEY to backfill from the bundled sample")
