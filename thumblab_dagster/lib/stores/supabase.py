"""The shared reference store (Supabase: Postgres + pgvector): one interface, two transports.

``ReferenceStore`` is what the pipeline and the query side use. Two implementations speak it:
``supabase_sql.SqlStore`` (psycopg over ``SUPABASE_DB_URL``: bulk upserts, migrations) and
``supabase_rest.RestStore`` (supabase-py over ``SUPABASE_URL`` + ``SUPABASE_KEY``: PostgREST
and RPC). The schema ships with the package (``thumblab_dagster/sql/ref_thumbnails.sql``).
Nothing here imports Dagster.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from importlib import resources
from typing import Protocol

import numpy as np
import pandas as pd

TABLE = "ref_thumbnails"
MATCH_FUNCTION = "match_ref_thumbnails"
REFERENCE_FUNCTION = "ref_thumbnails_reference_scores"
# Every column but the vector, in table order; ``embedding`` (float32 array) rides beside them.
# ``partition_date`` is the partition (a calendar day) the row was collected for: retention, the
# mirror check and the table-built window select by it, never by the wall clock of ``collected_at``.
COLUMNS = ["video_id", "niche", "title", "thumbnail_url", "views_per_hour", "view_count", "published_at",
           "channel_title", "description", "model", "collected_at", "partition_date"]
TIMESTAMP_COLUMNS = ("published_at", "collected_at")
MAX_HNSW_DIM = 2000
MATCH_COLUMNS = ["video_id", "similarity", "title", "thumbnail_url", "views_per_hour"]


def render_schema(dim: int) -> str:
    """The migration SQL for embeddings of ``dim`` dimensions."""
    if not isinstance(dim, int) or not 1 <= dim <= MAX_HNSW_DIM:
        raise ValueError(f"--dim must be a whole number of dimensions between 1 and {MAX_HNSW_DIM} (pgvector's "
                         f"HNSW limit), got {dim!r}")
    text = resources.files("thumblab_dagster").joinpath("sql", "ref_thumbnails.sql").read_text()
    return text.replace("{dim}", str(dim))


def _clean(value):
    """JSON- and SQL-ready scalars: NaN/NaT -> None, numpy -> Python, timestamps -> aware datetimes."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def as_date(value, what: str = "partition_date") -> date:
    """A calendar day from a ``date`` or an ISO ``YYYY-MM-DD`` string. A datetime is refused: which
    day it falls on depends on a time zone, and the caller is the one who knows it."""
    if isinstance(value, datetime):  # pd.Timestamp included
        raise TypeError(f"{what} must be a date (YYYY-MM-DD), not the time {value}: pass the partition's day")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a date: use YYYY-MM-DD") from None


def to_records(frame: pd.DataFrame, vectors: np.ndarray, model: str, partition_date=None) -> list[dict]:
    """One record per row: the table's columns (missing ones None) plus ``embedding`` (float32).

    ``partition_date`` (a date or ``YYYY-MM-DD``) is the partition the rows were collected for; without
    it the frame must carry a ``partition_date`` column. A late run of an old date keeps that date."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(frame) != len(vectors):
        raise ValueError(f"{len(frame)} rows but {len(vectors)} vectors")
    frame = frame.reset_index(drop=True).assign(model=model)
    if partition_date is not None:
        frame = frame.assign(partition_date=as_date(partition_date))
    elif "partition_date" not in frame or frame["partition_date"].isna().any():
        raise ValueError("every row needs the partition date it was collected for: pass partition_date=YYYY-MM-DD "
                         "or give the frame a partition_date column")
    else:
        frame["partition_date"] = [as_date(d) for d in frame["partition_date"]]
    frame = frame.reindex(columns=COLUMNS)
    for column in TIMESTAMP_COLUMNS:
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    records = []
    for row, vector in zip(frame.itertuples(index=False), vectors):
        record = {c: _clean(v) for c, v in zip(COLUMNS, row)}
        record["view_count"] = None if record["view_count"] is None else int(record["view_count"])
        record["embedding"] = vector
        records.append(record)
    return records


def newer_or_same(record: dict, stored_partition: date, stored_collected: datetime) -> bool:
    """Whether ``record`` may replace the stored row: the newest collection of a video wins, by partition
    date first, then collection time (a record without one is collected now). A backfill of an older date
    never rolls a row back (and so never lets retention delete a video still in the live window)."""
    mine = as_date(record.get("partition_date"))
    if mine != stored_partition:
        return mine > stored_partition
    collected = record.get("collected_at")
    return collected is None or _utc(collected) >= _utc(stored_collected)


def _utc(value) -> pd.Timestamp:
    value = pd.Timestamp(value)
    return value.tz_localize("UTC") if value.tzinfo is None else value  # naive means UTC, as in _clean


def checked_identifier(name: str, what: str = "table") -> str:
    """A plain Postgres identifier (letters, digits and underscores, not starting with a digit), or one
    ValueError line: a name that needs quoting is refused rather than spliced into a path or statement."""
    if not (isinstance(name, str) and name.isidentifier() and name.isascii()):
        raise ValueError(f"{what} name {name!r} is not a plain identifier: use letters, digits and underscores")
    return name


def vector_literal(vector) -> str:
    """pgvector's text form, ``[0.1,0.2,...]``, with enough digits to round-trip float32."""
    return "[" + ",".join(format(float(x), ".9g") for x in np.asarray(vector, dtype=np.float32)) + "]"


def parse_vector(text) -> np.ndarray:
    """A pgvector value as PostgREST returns it (``"[0.1,0.2]"``), or a list, to float32."""
    if isinstance(text, str):
        text = [float(x) for x in text.strip().strip("[]").split(",") if x.strip()]
    return np.asarray(text, dtype=np.float32)


class ReferenceStore(Protocol):
    """What the pipeline and the query side need of the shared store. ``name`` holds no secret."""

    name: str

    def upsert(self, records: list[dict], batch_size: int = 500) -> int:
        """Insert or update by video_id (re-running a partition changes nothing; ``newer_or_same`` decides
        which collection wins); rows written."""

    def delete_before(self, niche: str, first_date: date) -> int:
        """Delete the niche's rows whose partition_date is before ``first_date``; rows deleted."""

    def count(self, niche: str) -> int: ...

    def newest_model(self, niche: str) -> str | None:
        """The ``model`` label of the niche's newest row (latest partition_date, then collected_at; None
        when it has none)."""

    def ids_between_dates(self, niche: str, first: date, last: date) -> set[str]:
        """Video ids of the niche with first <= partition_date <= last."""

    def match(self, vector: np.ndarray, niche: str, count: int) -> list[dict]:
        """``match_ref_thumbnails``: dicts with MATCH_COLUMNS, most similar first."""

    def reference_scores(self, niche: str, k: int, sample_size: int) -> np.ndarray:
        """``ref_thumbnails_reference_scores``: leave-one-out top-k means of a fixed sample."""

    def rows_between_dates(self, niche: str, first: date, last: date) -> tuple[pd.DataFrame, np.ndarray]:
        """The niche's rows with first <= partition_date <= last (COLUMNS, ordered by video_id; timestamps
        UTC, partition_date as ``YYYY-MM-DD`` text) and their vectors."""
