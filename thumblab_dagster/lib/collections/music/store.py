"""The music collection's PostgreSQL store: scanned files, analysis results and each library's id map.

SQLAlchemy 2 Core over psycopg 3, Postgres only (JSONB, ``on conflict``, advisory locks). Three tables,
created idempotently by ``MusicStore.create_schema`` (``create_all``; nothing is ever dropped):

| table | rows |
|---|---|
| ``music_files`` | one per file path ever seen: stable ``file_id``, content hash, tags, ``status`` |
| ``track_analysis`` | the latest analysis of a file (``Analysis.to_json``) with the content hash it was made from |
| ``index_id_map`` | ``(library, position) -> file_id``: row ``position`` of the library's index is that file |

A file's ``status``: ``new`` (content not analysed yet), ``analysed``, ``failed`` (this content could not be
analysed; ``error`` says why; retried only when the content changes) or ``deleted`` (gone from the folder;
the row stays so a file that comes back keeps its id and, with the same content, its analysis).

Where the database is: ``THUMBLAB_MUSIC_DB_URL`` or, unset, an embedded Postgres (the ``pgserver``
package) under ``<data_root>/music_pg``, started once a process and reused. Every error names the
host and database only: a URL's password never reaches a message or a log.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.engine import URL, Connection, make_url

from thumblab_dagster.lib.collections.music.scan import ScanDiff, ScannedFile, diff

log = logging.getLogger(__name__)

STATUSES = ("new", "analysed", "failed", "deleted")
DRIVER = "postgresql+psycopg"
EMBEDDED_DIR = "music_pg"
MAX_ERROR_CHARS = 500
# pg_advisory_xact_lock keys: schema creation, file upserts, id maps (hashed with the library name)
_SCHEMA_LOCK, _FILES_LOCK, _ID_MAP_LOCK = 7_140_001, 7_140_002, 7_140_003

metadata = sa.MetaData()

music_files = sa.Table(
    "music_files", metadata,
    sa.Column("file_id", sa.Text, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),  # relative to the music folder, posix
    sa.Column("content_hash", sa.Text, nullable=False),  # sha256 of the bytes
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("mtime", sa.Float, nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("artist", sa.Text),
    sa.Column("album", sa.Text),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),  # content or status last changed
    sa.CheckConstraint(f"status in ({', '.join(repr(s) for s in STATUSES)})", name="music_files_status"),
)

track_analysis = sa.Table(
    "track_analysis", metadata,
    sa.Column("file_id", sa.Text, sa.ForeignKey("music_files.file_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("content_hash", sa.Text, nullable=False),  # the content analysed; stale once the file changes
    sa.Column("analysis", JSONB, nullable=False),
    sa.Column("include_tensorflow", sa.Boolean, nullable=False),  # True: the 50 MusiCNN tags are in it
    sa.Column("versions", JSONB, nullable=False),
    sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=False),
)

index_id_map = sa.Table(
    "index_id_map", metadata,
    sa.Column("library", sa.Text, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("file_id", sa.Text, nullable=False),
    sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
)


class MusicStoreError(RuntimeError):
    """The music database cannot be reached, started or used; one line, free of secrets."""


@dataclass(frozen=True)
class FileRow(ScannedFile):
    """A row of ``music_files``: the file as last scanned, and where its analysis stands."""

    status: str
    error: str | None
    seen_at: datetime
    updated_at: datetime


# --- where the database is -----------------------------------------------------------------

def sqlalchemy_url(url: str | URL) -> URL:
    """``url`` for SQLAlchemy's psycopg 3 driver: accepts ``postgresql://``, ``postgres://``,
    ``postgresql+psycopg://`` URLs and libpq ``key=value`` strings (what pgserver and psycopg give)."""
    if isinstance(url, URL):
        parsed = url
    elif "://" in url:
        try:
            parsed = make_url(url.strip())
        except (sa.exc.ArgumentError, ValueError):
            raise MusicStoreError(_BAD_URL) from None  # the parser's message may quote the password
    else:
        parsed = _from_conninfo(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise MusicStoreError(f"the music database must be PostgreSQL, not {parsed.get_backend_name()!r}; "
                              f"{_URL_HINT}")
    return parsed.set(drivername=DRIVER)


_URL_HINT = "use a URL such as postgresql://user:password@host:5432/music, or unset THUMBLAB_MUSIC_DB_URL"
_BAD_URL = f"THUMBLAB_MUSIC_DB_URL is not a database URL; {_URL_HINT}"


def _from_conninfo(text: str) -> URL:
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = {k: str(v) for k, v in conninfo_to_dict(text).items()}
    except Error:
        raise MusicStoreError(_BAD_URL) from None
    host = info.pop("host", None)
    port = info.pop("port", None)
    query = dict(info)
    for known in ("user", "password", "dbname"):
        query.pop(known, None)
    socket = bool(host) and host.startswith("/")  # a unix socket directory travels as ?host=
    if socket:
        query["host"] = host
    return URL.create(DRIVER, username=info.get("user"), password=info.get("password"),
                      host=None if socket else host, port=int(port) if port else None,
                      database=info.get("dbname"), query=query)


def describe(url: str | URL) -> str:
    """``database 'x' on host:port`` (or the socket folder) for messages: never the user or password."""
    parsed = sqlalchemy_url(url)
    socket = parsed.query.get("host")
    where = parsed.host or (socket if isinstance(socket, str) else None) or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"database {parsed.database or 'postgres'!r} on {where}{port}"


_embedded: dict[Path, str] = {}
_embedded_lock = threading.Lock()


def embedded_database_url(data_root: str | Path) -> str:
    """The URL of an embedded Postgres under ``<data_root>/music_pg`` (pgserver), started on first use.

    Started once per process and reused; pgserver also reuses a server another process already runs on
    the same folder, and stops it when the last process that asked for it exits.
    """
    folder = (Path(data_root) / EMBEDDED_DIR).absolute()
    with _embedded_lock:
        if folder not in _embedded:
            _embedded[folder] = _start_embedded(folder)
        return _embedded[folder]


def _start_embedded(folder: Path) -> str:
    try:
        import pgserver
    except ImportError:
        raise MusicStoreError("the embedded music database needs the pgserver package: pip install pgserver, "
                              "or set THUMBLAB_MUSIC_DB_URL to a PostgreSQL server") from None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():   # platformdirs' XDG_RUNTIME_DIR fallback notice says nothing to a user
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            server = pgserver.get_server(folder, cleanup_mode="stop")
        uri = server.get_uri()
    except Exception as exc:  # noqa: BLE001 - pgserver raises assertion, subprocess and OS errors alike
        if isinstance(exc, subprocess.CalledProcessError):  # its text is the whole command line
            reason = f"{Path(str(exc.cmd[0])).name} exited with status {exc.returncode}"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MusicStoreError(f"the embedded music database under {folder} cannot start ({reason}); see "
                              f"{folder / 'log'}, or set THUMBLAB_MUSIC_DB_URL to a PostgreSQL server") from None
    log.info("embedded music database running under %s", folder)
    return sqlalchemy_url(uri).render_as_string(hide_password=False)


def database_url(settings_value: str | None, data_root: str | Path) -> str:
    """``THUMBLAB_MUSIC_DB_URL`` (``settings_value``) when set, else the embedded database's URL."""
    if settings_value and settings_value.strip():
        return sqlalchemy_url(settings_value.strip()).render_as_string(hide_password=False)
    return embedded_database_url(data_root)


# --- the store -----------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _any(column: sa.ColumnElement[str], ids: list[str]) -> sa.ColumnElement[bool]:
    """``column = any(array)``: one parameter however many ids (an ``in`` list has one each, capped at 65535)."""
    return column == sa.any_(sa.bindparam(None, ids, type_=ARRAY(sa.Text)))


def _row(row: sa.Row) -> FileRow:
    return FileRow(**{name: row._mapping[name] for name in FileRow.__dataclass_fields__})


class MusicStore:
    """Files, analyses and id maps in one Postgres database. Every method is one transaction."""

    def __init__(self, url: str | URL):
        self.url = sqlalchemy_url(url)
        self.where = describe(self.url)
        # pre-ping: a long-lived process survives a database restart
        self.engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=4)

    def __repr__(self) -> str:
        return f"MusicStore({self.where})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MusicStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction; a database that cannot be reached is one ``MusicStoreError`` line."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise MusicStoreError(f"the music {self.where} cannot be used ({self._reason(exc)}); check "
                                  f"THUMBLAB_MUSIC_DB_URL or unset it for the embedded database") from None

    def _reason(self, exc: sa.exc.DBAPIError) -> str:
        lines = str(exc.orig or exc).strip().splitlines() or [type(exc).__name__]
        reason = lines[0][:300]
        password = self.url.password
        # libpq does not echo passwords; make sure none slips through anyway
        return reason.replace(password, "***") if password else reason

    def create_schema(self) -> None:
        """Create the tables that are missing (nothing is altered or dropped); safe to call again."""
        with self._transaction() as conn:
            # two processes starting at once would both try to create the tables
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            metadata.create_all(conn, checkfirst=True)

    # --- files ---

    def upsert_files(self, scanned: Sequence[ScannedFile]) -> None:
        """Insert or update scanned files. New content (a new file, changed bytes, a file that came back with
        other bytes) becomes ``new``; the same content keeps its status (a deleted file that comes back with
        the content it was analysed from is ``analysed`` again)."""
        if not scanned:
            return
        if len({s.file_id for s in scanned}) < len(scanned):
            raise ValueError("upsert_files: the same file id twice in one scan; pass each file once")
        now = _now()
        with self._transaction() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_FILES_LOCK)))
            ids = [s.file_id for s in scanned]
            old = {r.file_id: r for r in conn.execute(
                sa.select(music_files.c.file_id, music_files.c.content_hash, music_files.c.status,
                          music_files.c.error, music_files.c.updated_at).where(_any(music_files.c.file_id, ids))
                # locked: a result recorded meanwhile would otherwise be overwritten with a stale status
                .with_for_update())}
            analysed_hash = dict(conn.execute(
                sa.select(track_analysis.c.file_id, track_analysis.c.content_hash)
                .where(_any(track_analysis.c.file_id, ids))).all())
            rows = []
            for s in scanned:
                before = old.get(s.file_id)
                if before is not None and before.content_hash == s.content_hash and before.status != "deleted":
                    status, error, updated_at = before.status, before.error, before.updated_at
                else:
                    status = "analysed" if analysed_hash.get(s.file_id) == s.content_hash else "new"
                    error, updated_at = None, now
                rows.append({"file_id": s.file_id, "path": s.path, "content_hash": s.content_hash,
                             "size_bytes": s.size_bytes, "mtime": s.mtime, "title": s.title, "artist": s.artist,
                             "album": s.album, "duration_seconds": s.duration_seconds, "status": status,
                             "error": error, "seen_at": now, "updated_at": updated_at})
            statement = insert(music_files)
            conn.execute(statement.on_conflict_do_update(
                index_elements=[music_files.c.file_id],
                set_={c.name: statement.excluded[c.name] for c in music_files.columns if c.name != "file_id"}),
                rows)

    def mark_deleted(self, file_ids: Iterable[str]) -> int:
        """Mark files gone from the folder; returns how many were not deleted already."""
        ids = list(file_ids)
        if not ids:
            return 0
        with self._transaction() as conn:
            result = conn.execute(
                music_files.update()
                .where(_any(music_files.c.file_id, ids), music_files.c.status != "deleted")
                .values(status="deleted", updated_at=_now()))
            return result.rowcount

    def apply_scan(self, scanned: Sequence[ScannedFile]) -> ScanDiff:
        """Record a whole-folder scan: upsert what is there, mark what is missing deleted; returns the diff."""
        changes = diff(scanned, self.files())
        self.upsert_files(scanned)
        self.mark_deleted(changes.deleted)
        return changes

    def files(self, status: str | None = None) -> list[FileRow]:
        """Files by path: every file not deleted (``status=None``), or those with ``status``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(STATUSES)} or None")
        where = music_files.c.status == status if status else music_files.c.status != "deleted"
        with self._transaction() as conn:
            rows = conn.execute(sa.select(music_files).where(where)
                                .order_by(music_files.c.path, music_files.c.file_id))
            return [_row(r) for r in rows]

    def file(self, file_id: str) -> FileRow | None:
        """One file's row (deleted ones too), or None."""
        with self._transaction() as conn:
            row = conn.execute(sa.select(music_files).where(music_files.c.file_id == file_id)).first()
            return _row(row) if row is not None else None

    # --- analysis ---

    def _covers(self, include_tensorflow: bool) -> sa.ColumnElement[bool]:
        """An analysis of the file's current content with everything asked (tags when ``include_tensorflow``)."""
        same_content = track_analysis.c.content_hash == music_files.c.content_hash
        return sa.and_(same_content, track_analysis.c.include_tensorflow) if include_tensorflow else same_content

    def pending_analysis(self, include_tensorflow: bool) -> list[FileRow]:
        """Files to analyse: present, not failed on this content, and without an analysis of their current
        content (with the tags, when ``include_tensorflow``)."""
        analysed = sa.exists().where(track_analysis.c.file_id == music_files.c.file_id,
                                     self._covers(include_tensorflow))
        with self._transaction() as conn:
            rows = conn.execute(sa.select(music_files)
                                .where(music_files.c.status.in_(("new", "analysed")), ~analysed)
                                .order_by(music_files.c.path, music_files.c.file_id))
            return [_row(r) for r in rows]

    def _current(self, conn: Connection, file_id: str, content_hash: str) -> bool:
        """Lock the file's row; False when the content changed since it was read (the result is stale)."""
        current = conn.execute(sa.select(music_files.c.content_hash)
                               .where(music_files.c.file_id == file_id).with_for_update()).scalar()
        if current is None:
            raise KeyError(f"file id {file_id!r}: not in the music store; scan the music folder first")
        return current == content_hash

    def record_analysis(self, file_id: str, content_hash: str, analysis_json: dict[str, Any],
                        include_tensorflow: bool, versions: dict[str, str]) -> bool:
        """Store the analysis of ``content_hash`` and mark the file analysed, in one transaction.

        Returns False (and writes nothing) when the file's content changed since it was read: the new
        content is pending and will be analysed instead.
        """
        now = _now()
        with self._transaction() as conn:
            if not self._current(conn, file_id, content_hash):
                return False
            values = {"content_hash": content_hash, "analysis": analysis_json,
                      "include_tensorflow": include_tensorflow, "versions": versions, "analysed_at": now}
            conn.execute(insert(track_analysis).values(file_id=file_id, **values)
                         .on_conflict_do_update(index_elements=[track_analysis.c.file_id], set_=values))
            conn.execute(music_files.update().where(music_files.c.file_id == file_id)
                         .values(status="analysed", error=None, updated_at=now))
            return True

    def record_failure(self, file_id: str, content_hash: str, reason: str) -> bool:
        """Mark the file failed with ``reason`` (first line); it is not pending again until its content
        changes. Returns False (nothing written) when the content changed since it was read."""
        line = (str(reason).strip().splitlines() or ["unknown error"])[0][:MAX_ERROR_CHARS]
        with self._transaction() as conn:
            if not self._current(conn, file_id, content_hash):
                return False
            conn.execute(music_files.update().where(music_files.c.file_id == file_id)
                         .values(status="failed", error=line, updated_at=_now()))
            return True

    def analysed(self, include_tensorflow: bool) -> list[tuple[FileRow, dict[str, Any]]]:
        """Present files with an analysis of their current content (with tags when ``include_tensorflow``),
        by path, each with its ``Analysis.to_json`` dict."""
        with self._transaction() as conn:
            rows = conn.execute(
                sa.select(music_files, track_analysis.c.analysis)
                .join(track_analysis, track_analysis.c.file_id == music_files.c.file_id)
                .where(music_files.c.status != "deleted", self._covers(include_tensorflow))
                .order_by(music_files.c.path, music_files.c.file_id))
            return [(_row(r), r.analysis) for r in rows]

    # --- the index's id map ---

    def replace_id_map(self, library: str, file_ids: Sequence[str], built_at: datetime | None = None) -> None:
        """The library's id map becomes ``file_ids`` (positions 0..n-1), atomically."""
        with self._transaction() as conn:
            self._lock_library(conn, library)
            conn.execute(index_id_map.delete().where(index_id_map.c.library == library))
            self._insert_ids(conn, library, 0, file_ids, built_at or _now())

    def append_id_map(self, library: str, file_ids: Sequence[str], built_at: datetime | None = None) -> int:
        """Append ``file_ids`` after the library's last position; returns the first new position."""
        with self._transaction() as conn:
            self._lock_library(conn, library)
            start = conn.execute(sa.select(sa.func.count()).select_from(index_id_map)
                                 .where(index_id_map.c.library == library)).scalar_one()
            self._insert_ids(conn, library, start, file_ids, built_at or _now())
            return start

    def id_map(self, library: str) -> list[str]:
        """The library's file ids by position (empty when it has none)."""
        with self._transaction() as conn:
            return list(conn.execute(sa.select(index_id_map.c.file_id).where(index_id_map.c.library == library)
                                     .order_by(index_id_map.c.position)).scalars())

    @staticmethod
    def _lock_library(conn: Connection, library: str) -> None:
        # serialises replace/append of one library, so positions stay 0..n-1 without gaps or clashes
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ID_MAP_LOCK, sa.func.hashtext(library))))

    @staticmethod
    def _insert_ids(conn: Connection, library: str, start: int, file_ids: Sequence[str], built_at: datetime) -> None:
        if file_ids:
            conn.execute(index_id_map.insert(), [
                {"library": library, "position": start + i, "file_id": f, "built_at": built_at}
                for i, f in enumerate(file_ids)])

    # --- counts ---

    def counts(self) -> dict[str, int]:
        """``total_files`` (present), ``analysed_files``, ``failed_files`` (present, by status), ``deleted_files``."""
        with self._transaction() as conn:
            by_status = dict(conn.execute(sa.select(music_files.c.status, sa.func.count())
                                          .group_by(music_files.c.status)).all())
        return {"total_files": sum(n for s, n in by_status.items() if s != "deleted"),
                "analysed_files": by_status.get("analysed", 0),
                "failed_files": by_status.get("failed", 0),
                "deleted_files": by_status.get("deleted", 0)}
