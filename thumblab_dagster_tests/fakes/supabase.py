"""A loopback stand-in for Supabase's REST gateway: PostgREST (``/rest/v1``) and Storage (``/storage/v1``).

It speaks the wire formats for exactly what ``RestStore`` uses, over one in-memory ``ref_thumbnails`` table:

* ``GET``/``HEAD /rest/v1/ref_thumbnails?select=..&col=op.value&order=..&limit=..&offset=..`` (also the
  ``Range`` header; limit/offset win over it), capped at ``max_rows`` (PostgREST's ``db-max-rows``, 1000 on
  Supabase), ``Content-Range: lo-hi/total|*`` (``*/0`` when empty), 206 for a counted partial page;
* ``POST /rest/v1/ref_thumbnails`` with ``Prefer: resolution=merge-duplicates`` (upsert by ``on_conflict``),
  ``return=minimal|representation`` and ``count=exact``; duplicates in one batch fail like Postgres (21000);
* ``DELETE /rest/v1/ref_thumbnails?filters`` (``Prefer: count=exact`` -> ``Content-Range: */N``);
* ``POST /rest/v1/rpc/match_ref_thumbnails`` and ``/rpc/ref_thumbnails_reference_scores``: exact cosine over
  the rows (numpy), unknown argument names -> 404 PGRST202 like the schema cache;
* ``GET /rest/v1/<other>?select=*&col=op.value&order=..&limit=..`` on any read-only table given in ``tables``
  (filters eq/neq/gt/gte/lt/lte, the value read as the column's type), capped at ``max_rows`` too;
* Storage ``POST``/``PUT /storage/v1/object/<bucket>/<path>`` (multipart ``file`` part, ``x-upsert``) and
  ``GET /storage/v1/object[/authenticated]/<bucket>/<path>``, in Storage's error shape.

Every request must carry ``apikey: <key>`` and ``Authorization: Bearer <key>`` (else 401). Embeddings are kept
parsed (float32) and served in pgvector's text form, timestamps as Postgres renders timestamptz in UTC, dates
(``partition_date``) as ``YYYY-MM-DD``.
Every request is recorded; ``fail_next(n, mode)`` makes the next n requests answer 503 or drop the connection.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, unquote, urlparse

import numpy as np

from thumblab_dagster.lib.stores.supabase import COLUMNS, MATCH_FUNCTION, REFERENCE_FUNCTION, TABLE

ALL = [*COLUMNS, "embedding"]
TIMESTAMPS = {"published_at", "collected_at"}
DATES = {"partition_date"}
NOT_NULL = {"video_id", "niche", "embedding", "model", "collected_at", "partition_date"}
RESERVED = {"select", "order", "limit", "offset", "on_conflict", "columns"}
OPS = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a > b,
       "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
RPC_ARGS = {MATCH_FUNCTION: ({"query_embedding", "match_niche"}, {"match_count"}),
            REFERENCE_FUNCTION: ({"match_niche"}, {"match_k", "sample_size"})}


class PgError(Exception):
    """A PostgREST error answer: HTTP status plus the JSON body ``{code, details, hint, message}``."""

    def __init__(self, status: int, code: str, message: str, details=None, hint=None):
        super().__init__(message)
        self.status, self.body = status, {"code": code, "details": details, "hint": hint, "message": message}


def pg_vector(text) -> np.ndarray:
    if isinstance(text, str):
        if not re.fullmatch(r"\s*\[[^\[\]]*\]\s*", text):
            raise PgError(400, "22P02", f'invalid input syntax for type vector: "{text[:40]}"')
        text = [float(x) for x in text.strip().strip("[]").split(",") if x.strip()]
    return np.asarray(text, dtype=np.float32)


def pg_text(vector: np.ndarray) -> str:
    """pgvector's output: the shortest text that reads back as the same float4."""
    return "[" + ",".join(str(x) for x in vector) + "]"


def pg_time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T"))
    except (TypeError, ValueError):
        raise PgError(400, "22007", f'invalid input syntax for type timestamp with time zone: "{value}"') from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise PgError(400, "22007", f'invalid input syntax for type date: "{value}"') from None


@dataclass
class FakeSupabase:
    key: str
    dim: int | None = None  # the table's vector(dim); None: fixed by the first row
    max_rows: int = 1000
    rows: dict[str, dict] = field(default_factory=dict)  # video_id -> row (datetimes, float32 embedding)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # other tables, read-only: name -> JSON rows
    objects: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)  # (bucket, path) -> body
    requests: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # queued: "503" or "drop", one per coming request
    corrupt_uploads: bool = False  # store uploads with one byte flipped
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail_next(self, n: int, mode: str = "503") -> None:
        assert mode in ("503", "drop")
        self.failures.extend([mode] * n)

    def table(self) -> dict[str, dict]:
        """The table as PostgREST would serve it: video_id -> JSON row."""
        return {vid: self.render(row, ALL) for vid, row in sorted(self.rows.items())}

    def render(self, row: dict, columns: list[str]) -> dict:
        out = {}
        for c in columns:
            v = row.get(c)
            out[c] = (pg_time(v) if c in TIMESTAMPS else pg_text(v) if c == "embedding"
                      else v.isoformat() if c in DATES and v is not None else v)
        return out

    # -- PostgREST ------------------------------------------------------------------------------------------
    def coerce(self, column: str, value):
        if column not in ALL:
            raise PgError(400, "PGRST204", f"Could not find the '{column}' column of '{TABLE}' in the schema cache")
        if value is None:
            if column in NOT_NULL:
                raise PgError(400, "23502", f'null value in column "{column}" of relation "{TABLE}" violates '
                                            f"not-null constraint")
            return None
        if column in TIMESTAMPS:
            return parse_time(value)
        if column in DATES:
            return parse_date(value)
        if column == "embedding":
            vector = pg_vector(value)
            self.dim = self.dim or len(vector)
            if len(vector) != self.dim:
                raise PgError(400, "22000", f"expected {self.dim} dimensions, not {len(vector)}")
            return vector
        if column == "view_count" and (not isinstance(value, int) or isinstance(value, bool)):
            raise PgError(400, "22P02", f'invalid input syntax for type bigint: "{value}"')
        if column == "views_per_hour" and not isinstance(value, (int, float)):
            raise PgError(400, "22P02", f'invalid input syntax for type double precision: "{value}"')
        return value

    def filtered(self, params: list[tuple[str, str]]) -> list[dict]:
        rows = list(self.rows.values())
        for column, expr in params:
            if column in RESERVED:
                continue
            op, _, raw = expr.partition(".")
            if op == "in" and column == "video_id" and raw.startswith("(") and raw.endswith(")"):
                wanted = {v.strip('"') for v in raw[1:-1].split(",")}  # PostgREST list: in.(a,"b c")
                rows = [r for r in rows if r["video_id"] in wanted]
                continue
            if op not in OPS or column not in ALL or column == "embedding":
                raise PgError(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 1)')
            value = (parse_time(raw) if column in TIMESTAMPS else parse_date(raw) if column in DATES
                     else float(raw) if column in ("views_per_hour", "view_count") else raw)
            rows = [r for r in rows if r.get(column) is not None and OPS[op](r[column], value)]
        return rows

    def select(self, params: list[tuple[str, str]], range_header: str | None) -> tuple[list[dict], str, bool]:
        query = dict(params)
        columns = ALL if query.get("select", "*") == "*" else query["select"].split(",")
        for c in columns:
            if c not in ALL:
                raise PgError(400, "42703", f"column {TABLE}.{c} does not exist")
        rows = self.filtered(params)
        for term in reversed([t for t in query.get("order", "").split(",") if t]):
            column, _, direction = term.partition(".")
            rows.sort(key=lambda r: (r.get(column) is None, r.get(column)), reverse=direction.startswith("desc"))
        total = len(rows)
        offset, limit = 0, None
        if range_header and (m := re.fullmatch(r"(\d+)-(\d*)", range_header.strip())):  # "Range: 0-999"
            offset = int(m.group(1))
            limit = int(m.group(2)) - offset + 1 if m.group(2) else None
        if "offset" in query or "limit" in query:  # the query string wins over the Range header
            offset, limit = int(query.get("offset", 0)), int(query["limit"]) if "limit" in query else None
        limit = self.max_rows if limit is None else min(limit, self.max_rows)
        page = rows[offset:offset + limit]
        return [self.render(r, columns) for r in page], (f"{offset}-{offset + len(page) - 1}" if page else "*"), \
            len(page) < total

    def select_other(self, name: str, params: list[tuple[str, str]]) -> tuple[list[dict], str]:
        """A GET on one of ``tables``: the page of rows (only the selected columns) and its Content-Range span."""
        rows, query = self.tables[name], dict(params)
        for column, expr in params:
            if column in RESERVED:
                continue
            op, _, raw = expr.partition(".")
            if op not in OPS:
                raise PgError(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 1)')
            rows = [r for r in rows if r.get(column) is not None and OPS[op](r[column], type(r[column])(raw))]
        for term in reversed([t for t in query.get("order", "").split(",") if t]):
            column, _, direction = term.partition(".")
            rows = sorted(rows, key=lambda r: (r.get(column) is None, r.get(column)),
                          reverse=direction.startswith("desc"))
        offset = int(query.get("offset", 0))
        page = rows[offset:offset + min(int(query.get("limit", self.max_rows)), self.max_rows)]
        columns = None if query.get("select", "*") == "*" else query["select"].split(",")
        page = [r if columns is None else {c: r.get(c) for c in columns} for r in page]
        return page, f"{offset}-{offset + len(page) - 1}" if page else "*"

    def upsert(self, body, params: dict, prefer: set[str]) -> list[dict]:
        objs = body if isinstance(body, list) else [body]
        merge, ignore = "resolution=merge-duplicates" in prefer, "resolution=ignore-duplicates" in prefer
        if params.get("on_conflict", "video_id") != "video_id":
            raise PgError(400, "42P10", "there is no unique or exclusion constraint matching the ON CONFLICT "
                                        "specification")
        columns = params["columns"].replace('"', "").split(",") if "columns" in params else None
        staged, seen = dict(self.rows), set()
        written = []
        for obj in objs:
            keys = columns or list(obj)
            row = {c: self.coerce(c, obj.get(c)) for c in keys}
            vid = row.get("video_id")
            self.coerce("video_id", vid)
            if vid in seen and merge:
                raise PgError(400, "21000", "ON CONFLICT DO UPDATE command cannot affect row a second time",
                              hint="Ensure that no rows proposed for insertion within the same command have "
                                   "duplicate constrained values.")
            seen.add(vid)
            if vid in staged:
                if ignore:
                    continue
                if not merge:
                    raise PgError(409, "23505", 'duplicate key value violates unique constraint "ref_thumbnails_pkey"',
                                  details=f"Key (video_id)=({vid}) already exists.")
                row = {**staged[vid], **row}
            else:
                row = {c: None for c in ALL} | {"collected_at": datetime.now(timezone.utc)} | row
                for c in NOT_NULL:  # a column the batch left out falls back to its default or fails
                    if row[c] is None:
                        self.coerce(c, None)
            staged[vid] = row
            written.append(row)
        self.rows = staged  # one statement: all rows or none
        return written

    def delete(self, params: list[tuple[str, str]]) -> list[dict]:
        if not [c for c, _ in params if c not in RESERVED]:
            raise PgError(400, "21000", "DELETE requires a WHERE clause")  # Supabase's safeupdate
        gone = self.filtered(params)
        for row in gone:
            del self.rows[row["video_id"]]
        return gone

    def rpc(self, name: str, args: dict) -> list[dict]:
        if name not in RPC_ARGS or not isinstance(args, dict) or not RPC_ARGS[name][0] <= set(args) <= set().union(*RPC_ARGS[name]):
            raise PgError(404, "PGRST202", f"Could not find the function public.{name}({', '.join(sorted(args))}) "
                                           f"in the schema cache")
        niche = [r for r in self.rows.values() if r["niche"] == args["match_niche"]]
        unit = np.stack([r["embedding"] / np.linalg.norm(r["embedding"]) for r in niche]) if niche else None
        if name == MATCH_FUNCTION:
            q = pg_vector(args["query_embedding"]).astype(np.float64)
            if niche and len(q) != unit.shape[1]:
                raise PgError(400, "22000", f"different vector dimensions {unit.shape[1]} and {len(q)}")
            sims = unit @ (q / np.linalg.norm(q)) if niche else np.zeros(0)
            order = np.argsort(-sims, kind="stable")[:int(args.get("match_count", 10))]
            return [{"video_id": niche[i]["video_id"], "similarity": float(sims[i]), "title": niche[i]["title"],
                     "thumbnail_url": niche[i]["thumbnail_url"], "views_per_hour": niche[i]["views_per_hour"]}
                    for i in order]
        k, size = int(args.get("match_k", 10)), int(args.get("sample_size", 500))
        sample = sorted(range(len(niche)), key=lambda i: hashlib.md5(niche[i]["video_id"].encode()).hexdigest())[:size]
        out = []
        for i in sample:
            sims = np.delete(unit @ unit[i], i)  # leave this row out
            top = np.sort(sims)[::-1][:k]
            out.append({"video_id": niche[i]["video_id"], "score": float(top.mean()) if len(top) else None})
        return out


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while (size := int(handler.rfile.readline().split(b";")[0], 16)) > 0:
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _multipart(ctype: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, part content type). Split on the boundary by hand: the payload is binary."""
    boundary = re.search(r'boundary="?([^";]+)"?', ctype).group(1).encode()
    parts = {}
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk[2:].partition(b"\r\n\r\n")  # chunk opens with the delimiter line's CRLF
        name = re.search(rb'name="([^"]*)"', head).group(1).decode()
        part_type = re.search(rb"(?im)^content-type:\s*(.+?)\s*$", head)
        parts[name] = (data[:-2], part_type.group(1).decode() if part_type else None)  # minus the CRLF before --
    return parts


def _handler(state: FakeSupabase):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/json; charset=utf-8",
                  headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), headers=headers)

        def _handle(self):
            url = urlparse(self.path)
            body = _read_body(self)
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = {"method": self.command, "path": unquote(url.path), "raw_path": self.path,
                      "query": parse_qs(url.query, keep_blank_values=True), "headers": headers, "body": body}
            if headers.get("content-type", "").startswith("application/json") and body:
                record["json"] = json.loads(body)
            storage = url.path.startswith("/storage/v1/")
            with state.lock:
                state.requests.append(record)
                failure = state.failures.pop(0) if state.failures else None
            if failure == "drop":  # no status line at all: the client sees the connection close
                self.close_connection = True
                return
            if failure == "503":
                if storage:
                    return self._json(503, {"statusCode": "503", "error": "ServiceUnavailable", "message": "fake outage"})
                return self._json(503, {"code": "PGRST000", "details": "fake outage", "hint": None,
                                        "message": "Could not connect with the database"})
            if headers.get("apikey") != state.key or headers.get("authorization") != f"Bearer {state.key}":
                if storage:
                    return self._json(401, {"statusCode": "401", "error": "Unauthorized", "message": "Invalid API key"})
                return self._json(401, {"code": "PGRST301", "details": None, "message": "Invalid API key",
                                        "hint": "Double check your Supabase `anon` or `service_role` API key."})
            try:
                with state.lock:
                    if url.path.startswith("/rest/v1/"):
                        return self._rest(url.path[len("/rest/v1/"):], parse_qsl(url.query, keep_blank_values=True),
                                          record, headers)
                    if storage:
                        return self._storage(unquote(url.path[len("/storage/v1/"):]), body, headers)
                raise PgError(404, "PGRST125", f"Invalid path specified in request URL: {url.path}")
            except PgError as err:
                self._json(err.status, err.body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815 (http.server's naming)

        def _rest(self, resource: str, params: list[tuple[str, str]], record: dict, headers: dict):
            prefer = {p.strip() for p in headers.get("prefer", "").split(",") if p.strip()}
            counted = "count=exact" in prefer
            minimal = "return=minimal" in prefer
            if resource.startswith("rpc/") and self.command == "POST":
                return self._json(200, state.rpc(resource[4:], record.get("json", {})))
            if resource in state.tables and self.command in ("GET", "HEAD"):
                rows, span = state.select_other(resource, params)
                return self._json(200, rows, {"Content-Range": f"{span}/*", "Range-Unit": "items"})
            if resource != TABLE:
                raise PgError(404, "42P01", f'relation "public.{resource}" does not exist')
            if self.command in ("GET", "HEAD"):
                rows, span, partial = state.select(params, headers.get("range"))
                total = len(state.filtered(params)) if counted else None
                status = 206 if counted and partial else 200
                return self._json(status, rows, {"Content-Range": f"{span}/{'*' if total is None else total}",
                                                 "Range-Unit": "items"})
            if self.command == "POST":
                written = state.upsert(record.get("json"), dict(params), prefer)
                count = {"Content-Range": f"*/{len(written) if counted else '*'}"}
                if minimal:
                    return self._send(201, headers=count)
                return self._json(201, [state.render(r, ALL) for r in written], count)
            if self.command == "DELETE":
                gone = state.delete(params)
                count = {"Content-Range": f"*/{len(gone) if counted else '*'}"}
                if minimal:
                    return self._send(204, headers=count)
                return self._json(200, [state.render(r, ALL) for r in gone], count)
            raise PgError(405, "PGRST117", f"Unsupported HTTP method: {self.command}")

        def _storage(self, rest: str, body: bytes, headers: dict):
            m = re.fullmatch(r"object/(?:authenticated/)?([^/]+)/(.+)", rest)
            if not m:
                return self._json(404, {"statusCode": "404", "error": "not_found", "message": "Route not found"})
            bucket, path = m.groups()
            if self.command == "GET":
                if (bucket, path) not in state.objects:
                    return self._json(404, {"statusCode": "404", "error": "not_found", "message": "Object not found"})
                data, ctype = state.objects[bucket, path]
                return self._send(200, data, ctype)
            if self.command in ("POST", "PUT"):
                exists = (bucket, path) in state.objects
                if self.command == "POST" and exists and headers.get("x-upsert") != "true":
                    return self._json(409, {"statusCode": "409", "error": "Duplicate",
                                            "message": "The resource already exists"})
                if self.command == "PUT" and not exists:
                    return self._json(404, {"statusCode": "404", "error": "not_found", "message": "Object not found"})
                ctype = headers.get("content-type", "")
                data, part_type = (_multipart(ctype, body)["file"] if ctype.startswith("multipart/form-data")
                                   else (body, ctype))
                if state.corrupt_uploads and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                state.objects[bucket, path] = (data, part_type or "application/octet-stream")
                return self._json(200, {"Id": str(uuid.uuid4()), "Key": f"{bucket}/{path}"})
            return self._json(405, {"statusCode": "405", "error": "Method not allowed", "message": self.command})

    return Handler


class FakeSupabaseServer:
    def __init__(self, key: str, **options):
        self.state = FakeSupabase(key=key, **options)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        host, port = self.httpd.server_address
        self.state.base_url = f"http://{host}:{port}"
        # a short poll interval: shutdown() waits for the loop to look again
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FakeSupabase:
        self.thread.start()
        return self.state

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
