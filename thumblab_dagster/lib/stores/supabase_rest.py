"""``ReferenceStore`` over Supabase's REST gateway (``SUPABASE_URL`` + ``SUPABASE_KEY``) with supabase-py.

Rows go through PostgREST, similarity through the two SQL functions (RPC), index files through Storage.
The key travels only in the ``apikey`` / ``Authorization`` headers: every error leaves as ``RestStoreError``
with the HTTP status and the server's code and message, never the key or a URL's query string.
Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
from postgrest.exceptions import APIError
from postgrest.types import CountMethod, ReturnMethod
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException
from supabase import create_client
from supabase.lib.client_options import SyncClientOptions

from thumblab_dagster.lib.engine.files import sha256_file
from thumblab_dagster.lib.stores.supabase import (
    COLUMNS,
    MATCH_COLUMNS,
    MATCH_FUNCTION,
    REFERENCE_FUNCTION,
    TABLE,
    TIMESTAMP_COLUMNS,
    as_date,
    checked_identifier,
    newer_or_same,
    parse_vector,
    vector_literal,
)

log = logging.getLogger(__name__)
PAGE = 1000  # PostgREST's default max-rows
TRANSIENT = {502, 503, 504, 520}  # gateway hiccups worth another try: every operation here is idempotent


class RestStoreError(RuntimeError):
    """The REST gateway refused or failed a request (message free of secrets)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _iso(value: datetime) -> str:
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # naive means UTC, as in to_records
    return value.astimezone(timezone.utc).isoformat()


def _json(value):
    """A record value as PostgREST wants it: vectors in pgvector's text form, timestamps and dates as ISO 8601."""
    if isinstance(value, np.ndarray):
        return vector_literal(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


class RestStore:
    """``ReferenceStore`` (and Storage uploads) through supabase-py. Thread-safe as httpx.Client is."""

    name = "supabase (SUPABASE_URL)"

    def __init__(self, url: str, key: str, timeout_s: float = 30, retries: int = 2, backoff_s: float = 1.0):
        self._host = urlsplit(url).netloc.rpartition("@")[2] or "?"  # for messages: no userinfo
        self.retries, self.backoff_s = retries, backoff_s
        self._seen = threading.local()  # the last HTTP status per thread: postgrest's APIError drops it
        # Our own HTTP/1.1 client: supabase-py's default speaks HTTP/2, and hpack logs header values (the
        # apikey among them) at DEBUG; no redirects, which would carry the apikey header to another host.
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False, http2=False,
                                  event_hooks={"response": [self._note_status]})
        options = SyncClientOptions(httpx_client=self._http, postgrest_client_retry=False,  # we retry, below
                                    auto_refresh_token=False, persist_session=False)
        try:
            self._client = create_client(url, key, options)
        except Exception as exc:  # a malformed URL or key: say what, never the key
            self._http.close()
            detail = str(exc).replace(key, "***") if key else str(exc)
            raise RestStoreError(f"cannot create a Supabase client for {self._host}: {detail}") from None

    def __repr__(self) -> str:
        return f"RestStore(host={self._host!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _note_status(self, response: httpx.Response) -> None:
        self._seen.status = response.status_code

    def _scrub(self, text: str) -> str:
        key = self._client.supabase_key
        text = text.replace(key, "***") if key else text
        return re.sub(r"(https?://[^\s?'\"]*)\?[^\s'\"]*", r"\1?…", text)  # drop query strings

    def _call(self, what: str, fn):
        """``fn()``, retried on transient failures (gateway 5xx, dropped connections); errors -> RestStoreError."""
        for attempt in range(self.retries + 1):
            self._seen.status = None
            try:
                return fn()
            except (APIError, StorageException, httpx.HTTPError) as exc:
                status = self._seen.status
                if isinstance(exc, APIError):
                    detail = f"{exc.code or ''}: {exc.message or ''}".strip(": ")
                elif isinstance(exc, StorageApiError):
                    detail = f"{exc.code}: {exc.message}"
                else:
                    detail = f"{type(exc).__name__}: {exc}"
                message = self._scrub(f"{what} on {self._host} failed (HTTP {status or '-'}) {detail}")
                if attempt < self.retries and (status in TRANSIENT or isinstance(exc, httpx.TransportError)):
                    log.warning("%s; retrying", message)
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise RestStoreError(message, status) from None  # the chained cause could quote headers

    def _table(self):
        return self._client.table(TABLE)

    # -- rows -------------------------------------------------------------------------------------------------
    def upsert(self, records: list[dict], batch_size: int = 500) -> int:
        # one statement per batch: Postgres refuses to update a row twice in it (21000), so the last record wins
        unique = list({r["video_id"]: r for r in records}.values())
        for start in range(0, len(unique), batch_size):
            batch = [{k: _json(v) for k, v in r.items()} for r in self._not_older(unique[start:start + batch_size])]
            if not batch:
                continue
            # return=minimal: the representation would echo every embedding back
            query = self._table().upsert(batch, on_conflict="video_id", returning=ReturnMethod.minimal)
            self._call(f"upsert into {TABLE}", query.execute)
        log.info("upserted %d rows into %s", len(unique), TABLE)
        return len(unique)

    def _not_older(self, batch: list[dict]) -> list[dict]:
        """Drop records older than the stored row (``newer_or_same``, as SqlStore's upsert decides in SQL):
        PostgREST's upsert has no conditional update, so the stored dates and times are read first."""
        ids = [r["video_id"] for r in batch]
        query = self._table().select("video_id,partition_date,collected_at").in_("video_id", ids)
        stored = {row["video_id"]: (as_date(row["partition_date"]), pd.Timestamp(row["collected_at"]))
                  for row in self._call(f"select from {TABLE}", query.execute).data}
        return [r for r in batch if r["video_id"] not in stored or newer_or_same(r, *stored[r["video_id"]])]

    def delete_before(self, niche: str, first_date: date) -> int:
        query = (self._table().delete(count=CountMethod.exact, returning=ReturnMethod.minimal)
                 .eq("niche", niche).lt("partition_date", as_date(first_date, "first_date").isoformat()))
        return self._count(self._call("retention delete", query.execute), "retention delete")

    def count(self, niche: str) -> int:
        query = self._table().select("video_id", count=CountMethod.exact, head=True).eq("niche", niche)
        return self._count(self._call("count", query.execute), "count")

    def newest_model(self, niche: str) -> str | None:
        query = (self._table().select("model").eq("niche", niche).order("partition_date", desc=True)
                 .order("collected_at", desc=True).limit(1))
        rows = self._call("newest model", query.execute).data
        return rows[0]["model"] if rows else None

    def _count(self, response, what: str) -> int:
        if response.count is None:  # Content-Range without a total: the gateway dropped Prefer: count=exact
            raise RestStoreError(f"{what} on {self._host}: the response carried no row count")
        return int(response.count)

    def _pages(self, what: str, columns: list[str], niche: str, first: date, last: date):
        """Keyset pages by video_id (stable under concurrent writes, unlike offsets) until an empty page: a
        short page proves nothing when the project's max-rows is below PAGE."""
        first, last = as_date(first, "first").isoformat(), as_date(last, "last").isoformat()
        after = None
        while True:
            query = (self._table().select(*columns).eq("niche", niche).gte("partition_date", first)
                     .lte("partition_date", last))
            if after is not None:
                query = query.gt("video_id", after)
            page = self._call(what, query.order("video_id").limit(PAGE).execute).data
            if not page:
                return
            yield from page
            after = page[-1]["video_id"]

    def ids_between_dates(self, niche: str, first: date, last: date) -> set[str]:
        return {row["video_id"] for row in self._pages("ids_between_dates", ["video_id"], niche, first, last)}

    def rows_between_dates(self, niche: str, first: date, last: date) -> tuple[pd.DataFrame, np.ndarray]:
        rows = list(self._pages("rows", [*COLUMNS, "embedding"], niche, first, last))
        frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
        for column in TIMESTAMP_COLUMNS:  # Postgres drops zero fractions: the format varies row to row
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        vectors = np.stack([parse_vector(r["embedding"]) for r in rows]) if rows else np.zeros((0, 0), np.float32)
        return frame, vectors

    # -- any table (read-only) ------------------------------------------------------------------------------
    def table_rows(self, table: str, key: str = "id") -> list[dict]:
        """Every row of ``table`` as PostgREST renders it (JSON values), in ``key`` order. Keyset pages by
        ``key`` (a unique, non-null column) until an empty page, as ``_pages`` reads ``ref_thumbnails``."""
        table, key = checked_identifier(table), checked_identifier(key, "key column")
        rows, after = [], None
        while True:
            query = self._client.table(table).select("*")
            if after is not None:
                query = query.gt(key, after)
            page = self._call(f"select from {table}", query.order(key).limit(PAGE).execute).data
            if not page:
                return rows
            rows.extend(page)
            after = page[-1].get(key)
            if after is None:  # nulls sort last: no key to page on past them
                raise RestStoreError(f"{table} on {self._host} has rows without {key}: every row needs one")

    # -- similarity (RPC) ------------------------------------------------------------------------------------
    def match(self, vector: np.ndarray, niche: str, count: int) -> list[dict]:
        params = {"query_embedding": vector_literal(np.ravel(vector)), "match_niche": niche, "match_count": int(count)}
        data = self._call(MATCH_FUNCTION, self._client.rpc(MATCH_FUNCTION, params).execute).data
        return [{c: row.get(c) for c in MATCH_COLUMNS} for row in data or []]

    def reference_scores(self, niche: str, k: int, sample_size: int) -> np.ndarray:
        params = {"match_niche": niche, "match_k": int(k), "sample_size": int(sample_size)}
        data = self._call(REFERENCE_FUNCTION, self._client.rpc(REFERENCE_FUNCTION, params).execute).data
        return np.array([r["score"] for r in data or [] if r.get("score") is not None], dtype=np.float32)

    # -- Storage ---------------------------------------------------------------------------------------------
    def upload_file(self, bucket: str, path: str, local_file, content_type: str = "application/octet-stream") -> dict:
        """Upload (overwriting), then read the object back and compare size and sha256 with the local file."""
        local = Path(local_file)
        size, digest = local.stat().st_size, sha256_file(local)
        api = self._client.storage.from_(bucket)
        options = {"content-type": content_type, "upsert": "true"}
        self._call(f"upload of {bucket}/{path}", lambda: api.upload(path, local, options))
        stored = self.download(bucket, path)
        stored_digest = hashlib.sha256(stored).hexdigest()
        if len(stored) != size or stored_digest != digest:
            raise RestStoreError(f"storage object {bucket}/{path} does not match {local.name}: {len(stored)} bytes "
                                 f"(sha256 {stored_digest[:12]}) vs {size} bytes (sha256 {digest[:12]}) locally")
        log.info("uploaded %s to %s/%s (%d bytes, verified)", local.name, bucket, path, size)
        return {"bucket": bucket, "path": path, "size": size, "sha256": digest}

    def download(self, bucket: str, path: str) -> bytes:
        api = self._client.storage.from_(bucket)
        return self._call(f"download of {bucket}/{path}", lambda: api.download(path))
