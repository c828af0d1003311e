"""``ReferenceStore`` over a direct Postgres connection (``SUPABASE_DB_URL``): migrations and bulk upserts.

psycopg 3 + pgvector; numpy float32 arrays travel as ``vector``. Every error leaves as ``StoreError`` whose
message names the host and database only: the URL's password never reaches a log.
Nothing here imports Dagster.
"""

from __future__ import annotations

import threading
from datetime import date

import numpy as np
import pandas as pd
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from thumblab_dagster.lib.stores.supabase import (
    COLUMNS,
    MATCH_COLUMNS,
    MATCH_FUNCTION,
    REFERENCE_FUNCTION,
    TABLE,
    TIMESTAMP_COLUMNS,
    as_date,
    checked_identifier,
    render_schema,
)

_ALL = [*COLUMNS, "embedding"]
STATEMENT_TIMEOUT_MS = 60_000
_UPSERT = (f"insert into {TABLE} ({', '.join(_ALL)}) values ({', '.join(['%s'] * len(_ALL))}) "
           f"on conflict (video_id) do update set " + ", ".join(f"{c} = excluded.{c}" for c in _ALL[1:])
           # the newest collection wins (supabase.newer_or_same): by partition date, then collection time
           + f" where ({TABLE}.partition_date, {TABLE}.collected_at) <= (excluded.partition_date, excluded.collected_at)")
_ATTRIBUTE_SQL = (f"select atttypmod, attnotnull from pg_attribute where attrelid = to_regclass('{TABLE}') "
                  f"and attname = %s and not attisdropped")


class StoreError(RuntimeError):
    """The shared store could not be reached or refused a statement (message free of secrets)."""


def _where(db_url: str) -> str:
    """``host[:port]/dbname`` for messages; never the user or password."""
    try:
        info = conninfo_to_dict(db_url)
    except psycopg.Error:
        # the parser's message can quote the URL (password included): say nothing of it
        raise StoreError("SUPABASE_DB_URL is not a valid Postgres connection string") from None
    port = f":{info['port']}" if info.get("port") else ""
    return f"{info.get('host') or 'localhost'}{port}/{info.get('dbname') or '?'}"


def _scrub(text: str, db_url: str) -> str:
    """Belt and braces: libpq does not echo passwords, but make sure none slips through."""
    try:
        password = conninfo_to_dict(db_url).get("password")
    except psycopg.Error:
        password = None
    text = text.replace(db_url, "<SUPABASE_DB_URL>")
    return text.replace(password, "***") if password else text


def _connect(db_url: str, connect_timeout_s: float, autocommit: bool = True) -> psycopg.Connection:
    where = _where(db_url)
    try:
        # prepare_threshold=None: Supabase's transaction pooler cannot hold server-side prepared statements
        # keepalives + statement_timeout: a hung pooler or a partition fails the call instead of
        # blocking every query behind the shared connection. The timeout is SET after connecting, not
        # sent as a startup "options" parameter, which connection poolers may refuse.
        conn = psycopg.connect(db_url, connect_timeout=max(1, round(connect_timeout_s)), autocommit=autocommit,
                               prepare_threshold=None, keepalives=1, keepalives_idle=30, keepalives_interval=10,
                               keepalives_count=3)
        conn.execute(f"set statement_timeout = {STATEMENT_TIMEOUT_MS}")
        if not autocommit:
            conn.commit()  # the SET alone must not be the start of the caller's transaction
    except psycopg.Error as err:
        raise StoreError(f"cannot connect to Postgres at {where}: {_scrub(str(err), db_url)}") from None
    return conn


def migrate(db_url: str, dim: int, connect_timeout_s: float = 10) -> dict:
    """Apply ``render_schema(dim)`` in one transaction; idempotent; refuses a table of another dimension.

    A table made before ``partition_date`` gets the column, filled from ``collected_at``'s Hobart day
    (``backfilled``: how many rows; 0 when there was nothing to do)."""
    schema = render_schema(dim)
    where = _where(db_url)
    with _connect(db_url, connect_timeout_s, autocommit=False) as conn:
        try:
            with conn.transaction():
                # two migrations at once would race on "if not exists": serialise them
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [TABLE])
                row = conn.execute(_ATTRIBUTE_SQL, ["embedding"]).fetchone()
                if row is not None and row[0] != dim:
                    raise ValueError(
                        f"{TABLE} at {where} holds {row[0]}-dimensional embeddings, not {dim}: use the model that "
                        f"filled it (--dim {row[0]}), or drop the table (losing its rows) and migrate again")
                partition = conn.execute(_ATTRIBUTE_SQL, ["partition_date"]).fetchone()
                to_fill = 0
                if row is not None and not (partition and partition[1]):
                    to_fill = conn.execute(f"select count(*) from {TABLE} where "
                                           + ("partition_date is null" if partition else "true")).fetchone()[0]
                conn.execute(schema)
        except psycopg.Error as err:
            raise StoreError(f"migration of {TABLE} at {where} failed: {_scrub(str(err), db_url)}") from err
    return {"dim": dim, "created": row is None, "backfilled": to_fill, "where": where}


class SqlStore:
    """``ReferenceStore`` over psycopg. One lazily opened connection, reused under a lock (thread-safe)."""

    name = "postgres (SUPABASE_DB_URL)"

    def __init__(self, db_url: str, connect_timeout_s: float = 10):
        self._url, self._timeout = db_url, connect_timeout_s
        self._where = _where(db_url)  # fails early (without the password) on a malformed URL
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn):
        """Run ``fn(conn)``. Every operation is idempotent, so a reused connection that turns out dead
        (pooler idle timeout, server restart) is replaced and the operation retried once."""
        with self._lock:
            for attempt in (0, 1):
                fresh = self._conn is None or self._conn.closed
                if fresh:
                    self._conn = _connect(self._url, self._timeout)
                    try:
                        register_vector(self._conn)
                    except psycopg.Error as err:
                        self.close()
                        raise StoreError(f"no pgvector at {self._where} ({err}): run the migration first") from None
                conn = self._conn
                try:
                    return fn(conn)
                except psycopg.Error as err:
                    if conn.broken or conn.closed:
                        self.close()
                        if attempt == 0 and not fresh:
                            continue
                    raise StoreError(f"{what} on {self._where} failed: {_scrub(str(err), self._url)}") from err

    def upsert(self, records: list[dict], batch_size: int = 500) -> int:
        def run(conn):
            for start in range(0, len(records), batch_size):
                rows = [tuple(np.asarray(r[c], dtype=np.float32) if c == "embedding" else r.get(c) for c in _ALL)
                        for r in records[start:start + batch_size]]
                with conn.transaction(), conn.cursor() as cur:  # one transaction per batch: all or nothing
                    cur.executemany(_UPSERT, rows)
            return len(records)

        return self._call(f"upsert into {TABLE}", run) if records else 0

    def delete_before(self, niche: str, first_date: date) -> int:
        sql = f"delete from {TABLE} where niche = %s and partition_date < %s"
        first = as_date(first_date, "first_date")
        return self._call("retention delete", lambda conn: conn.execute(sql, [niche, first]).rowcount)

    def count(self, niche: str) -> int:
        sql = f"select count(*) from {TABLE} where niche = %s"
        return self._call("count", lambda conn: conn.execute(sql, [niche]).fetchone()[0])

    def newest_model(self, niche: str) -> str | None:
        sql = f"select model from {TABLE} where niche = %s order by partition_date desc, collected_at desc limit 1"
        return self._call("newest_model", lambda conn: (conn.execute(sql, [niche]).fetchone() or [None])[0])

    def ids_between_dates(self, niche: str, first: date, last: date) -> set[str]:
        sql = f"select video_id from {TABLE} where niche = %s and partition_date between %s and %s"
        params = [niche, as_date(first, "first"), as_date(last, "last")]
        return self._call("ids_between_dates", lambda conn: {r[0] for r in conn.execute(sql, params)})

    def match(self, vector: np.ndarray, niche: str, count: int) -> list[dict]:
        sql = f"select {', '.join(MATCH_COLUMNS)} from {MATCH_FUNCTION}(%s, %s, %s)"
        params = [np.asarray(vector, dtype=np.float32).ravel(), niche, int(count)]
        rows = self._call(MATCH_FUNCTION, lambda conn: conn.execute(sql, params).fetchall())
        return [dict(zip(MATCH_COLUMNS, row)) for row in rows]

    def reference_scores(self, niche: str, k: int, sample_size: int) -> np.ndarray:
        sql = f"select score from {REFERENCE_FUNCTION}(%s, %s, %s) where score is not null"
        rows = self._call(REFERENCE_FUNCTION, lambda conn: conn.execute(sql, [niche, int(k), int(sample_size)]).fetchall())
        return np.array([r[0] for r in rows], dtype=np.float32)

    def table_rows(self, table: str, key: str = "id") -> list[dict]:
        """Every row of ``table`` as dicts of Python values, in ``key`` order (as ``RestStore.table_rows``)."""
        query = pgsql.SQL("select * from {} order by {}").format(
            pgsql.Identifier(checked_identifier(table)), pgsql.Identifier(checked_identifier(key, "key column")))
        # its own short connection: the shared one needs pgvector, which a plain table may live without
        with _connect(self._url, self._timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                return cur.execute(query).fetchall()
            except psycopg.Error as err:
                first = (str(err).splitlines() or [type(err).__name__])[0]  # not the LINE / caret lines after it
                raise StoreError(f"select from {table} on {self._where} failed: {_scrub(first, self._url)}") from None

    def rows_between_dates(self, niche: str, first: date, last: date) -> tuple[pd.DataFrame, np.ndarray]:
        sql = (f"select {', '.join(_ALL)} from {TABLE} where niche = %s and partition_date between %s and %s "
               f"order by video_id")
        params = [niche, as_date(first, "first"), as_date(last, "last")]
        rows = self._call("rows", lambda conn: conn.execute(sql, params).fetchall())
        frame = pd.DataFrame([r[:-1] for r in rows], columns=COLUMNS)
        for column in TIMESTAMP_COLUMNS:  # UTC whatever the session's TimeZone
            frame[column] = pd.to_datetime(frame[column], utc=True)
        frame["partition_date"] = frame["partition_date"].map(date.isoformat)  # as the REST store reads it
        # pgvector >= 0.4 loads a ``Vector``; older releases loaded numpy arrays directly
        vectors = [r[-1].to_numpy() if hasattr(r[-1], "to_numpy") else r[-1] for r in rows]
        vectors = np.stack(vectors).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
        return frame, vectors
