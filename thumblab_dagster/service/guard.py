"""Hostile input, refused before it costs anything and never echoed back.

``BodyGuard`` (ASGI middleware) caps the request body: a declared ``Content-Length`` over the cap
is a 413 before a byte is read, and a chunked body is counted while it is read (at most
``max_bytes`` are ever buffered). A body that is not UTF-8 is a 422: JSON on the wire is UTF-8,
and Python's decoder would otherwise let encoded surrogates through or fail as a 400.

``validation_error`` replaces FastAPI's 422 handler, which echoes every ``input`` (a 10 MB
title came back whole) and cannot encode a lone surrogate (a 500 and a reset connection).
Each error here is the field's path and pydantic's short message, nothing the caller sent.
``text(...)`` is the string type of the wire format: a lone surrogate is a 422 naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, StringConstraints

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MAX_MESSAGE = 200


def _well_formed(value):
    try:
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return value


def text(**constraints):
    """The wire format's string type: ``str`` with ``StringConstraints(**constraints)`` (inside, so their
    messages stay "String should have at most N characters"), checked first for lone surrogates."""
    return Annotated[str, StringConstraints(**constraints), BeforeValidator(_well_formed)]


def _path_part(part) -> str | int:
    """A path element: an index or a field name; anything else (a key the caller chose) is masked."""
    if isinstance(part, int):
        return part
    text = str(part)
    return text if _SAFE_KEY.fullmatch(text) else "<key>"


def _message(error: dict) -> str:
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid" and isinstance(error.get("ctx"), dict):
        msg = f"{msg}: {error['ctx'].get('error', '')}".rstrip(": ")  # json's own text: a position, no input
    # pydantic's messages name what is expected, not what was sent; the cap and the encoding are a
    # second line of defence should one ever quote its input
    return msg.encode("utf-8", "backslashreplace").decode("utf-8")[:_MAX_MESSAGE]


def _detail(loc, msg: str, kind: str) -> dict:
    loc = [_path_part(p) for p in loc]
    field = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc))
    return {"loc": loc, "field": field, "msg": msg, "type": kind}


class FieldError(BaseModel):
    loc: list[str | int]
    field: str
    msg: str
    type: str


class ValidationErrors(BaseModel):
    """The 422 body (the OpenAPI schema of ``validation_error``'s answer)."""
    detail: list[FieldError]


def unprocessable(details: list[dict]) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": details})


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422: per error its path (``loc`` and ``field``, e.g. ``thumbnails.0.url``), a short ``msg`` and
    its ``type``; never the ``input`` or ``ctx`` values."""
    return unprocessable([_detail(e.get("loc", ()), _message(e), str(e.get("type", "invalid")))
                          for e in exc.errors()])


class BodyTooLarge(Exception):
    pass


class BodyGuard:
    """Pure ASGI: reads the body (at most ``max_bytes``) before the app does, then replays it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        try:
            body = await self._read(receive)
        except BodyTooLarge:
            return await self._too_large(scope, receive, send)
        if body is None:  # the client went away mid-body: nobody to answer
            return
        if body:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return await unprocessable([_detail(["body"], f"the body is not valid UTF-8 (byte {exc.start})",
                                                    "utf8_invalid")])(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, scope, receive, send):
        # Connection: close, so the server need not read the rest of the body it refused
        response = JSONResponse(status_code=413, headers={"Connection": "close"},
                                content={"detail": f"the request body is over {self.max_bytes} bytes "
                                                   "(THUMBLAB_MAX_BODY_BYTES)"})
        await response(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the disconnect, when the client goes
    return replay

