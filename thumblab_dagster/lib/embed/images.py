"""The one image fetcher: http(s), local files, and schemes a collection registers (``sample://``).

Every failure is a ``FetchError`` with a short reason and a kind, so a caller can skip and count it:
``content`` (this URL's answer is no usable image: 4xx, not an image, too big, undecodable; asking
again will not help) or ``transport`` (the network or the server failed: refused, reset, dropped,
timed out, 5xx; ``fetch_images`` retries these with backoff before giving up).
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import IncompleteRead, RemoteDisconnected
from pathlib import Path
from urllib.parse import urlparse

import requests
import urllib3.exceptions as u3
from PIL import Image

from thumblab_dagster.lib.embed.http import retrying_session
from thumblab_dagster.lib.settings import SETTING

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = SETTING["fetch_max_bytes"].default  # declared in lib/settings.py
# Thumbnails are at most 1280x720; anything far larger is a decompression bomb, not a thumbnail. The
# pipeline's (trusted) URLs keep this cap; the service passes its lower THUMBLAB_FETCH_MAX_PIXELS.
MAX_PIXELS = 40_000_000
MIN_SIDE = 8
# CLIP looks at 224 px: decoding to about twice that keeps its own resize as good as from the full image.
# A large JPEG is decoded reduced (draft: a 4096 x 4096 one costs a few MB instead of 50); other formats
# are decoded whole, at most DECODE_SLOTS at once, and kept box-reduced. Thumbnails up to 1280x720 are
# decoded as before, so their embeddings do not change.
DECODE_SIDE = 448


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Decoding is CPU-bound (Pillow releases the GIL): more decodes at once than cores only add peak memory.
DECODE_SLOTS = _cores()
_decodes = threading.BoundedSemaphore(DECODE_SLOTS)
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}

CONTENT, TRANSPORT = "content", "transport"
# Statuses that say "not now" rather than "not this": retried, and counted as transport failures.
RETRY_LATER_STATUSES = frozenset({408, 429})
MAX_BACKOFF_S = 30.0
# A transport failure's innermost cause, in words (the first match wins: RemoteDisconnected is a reset).
TIMED_OUT = "no answer in time"
_CAUSES = (
    ((TimeoutError, u3.TimeoutError, requests.Timeout), TIMED_OUT),
    (RemoteDisconnected, "the server closed the connection without a response"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (u3.NameResolutionError, "cannot resolve the host"),
    ((IncompleteRead, u3.IncompleteRead), "the connection broke mid-response"),
    (u3.NewConnectionError, "could not connect"),
    (u3.ProtocolError, "the connection broke"),
)


class FetchError(Exception):
    """An image could not be fetched or decoded; ``str()`` is a short, loggable reason.

    ``kind`` is ``CONTENT`` or ``TRANSPORT`` (see the module doc); ``label`` groups like failures
    for counting ("HTTP 404", "ConnectionError"); by default the reason with its numbers blanked.
    """

    def __init__(self, reason: str, kind: str = CONTENT, label: str | None = None):
        super().__init__(reason)
        self.kind = kind
        self.label = label or reason_kind(reason)


@dataclass
class FetchResult:
    url: str
    image: Image.Image | None = None
    error: str | None = None   # the short reason, when it failed
    kind: str | None = None    # CONTENT or TRANSPORT, when it failed
    label: str | None = None   # the failure's group for counting, e.g. "HTTP 404" or "ConnectionError"
    attempts: int = 1          # requests made (transport failures are retried)

    @property
    def ok(self) -> bool:
        return self.image is not None


def decode_image(data: bytes, source: str | None = None, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes to an RGB image, refusing non-images, bombs and degenerate sizes.

    The size is judged from the header, before any pixel is decoded. A JPEG is decoded reduced (draft)
    and any image much larger than ``DECODE_SIDE`` is box-reduced, keeping its short side >= ``DECODE_SIDE``;
    at most ``DECODE_SLOTS`` decodes run at once.
    """
    prefix = f"{source}: " if source else ""
    if not data:
        raise FetchError(f"{prefix}empty body")
    with _decodes:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                _check_header(img, prefix, max_pixels)
                if img.format == "JPEG":  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels are ever decoded
                    img.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
                img.load()
                return _reduced(img.convert("RGB"))
        except FetchError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise FetchError(f"{prefix}decompression bomb refused") from None
        except Exception as exc:  # PIL raises many types for corrupt data
            raise FetchError(f"{prefix}not a readable image ({type(exc).__name__})") from None


def _check_header(img: Image.Image, prefix: str, max_pixels: int) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise FetchError(f"{prefix}unsupported image format {img.format}")
    if img.width * img.height > max_pixels:
        raise FetchError(f"{prefix}{img.width}x{img.height} pixels is too large (the limit is {max_pixels:,} pixels)")
    if min(img.size) < MIN_SIDE:
        raise FetchError(f"{prefix}{img.width}x{img.height} pixels is too small")


def _reduced(img: Image.Image) -> Image.Image:
    """``img`` box-reduced by a whole factor when its short side is at least twice ``DECODE_SIDE``."""
    factor = min(img.size) // DECODE_SIDE
    return img.reduce(factor) if factor >= 2 else img


def _read_http(url: str, session: requests.Session, timeout_s: float, max_bytes: int) -> bytes:
    try:
        with session.get(url, timeout=(min(timeout_s, 5.0), timeout_s), stream=True) as resp:
            if resp.status_code != 200:
                raise status_error(resp.status_code)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise FetchError(f"content type {ctype} is not an image")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{int(declared):,} bytes exceeds the {max_bytes:,}-byte cap")
            chunks, size = [], 0
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"body exceeds the {max_bytes:,}-byte cap")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise request_error(exc) from None


def status_error(status: int) -> FetchError:
    """A non-200 answer: 5xx, 408 and 429 are the server's trouble (transport), other codes the URL's."""
    kind = TRANSPORT if status >= 500 or status in RETRY_LATER_STATUSES else CONTENT
    return FetchError(f"HTTP {status}", kind, label=f"HTTP {status}")


def request_error(exc: requests.RequestException) -> FetchError:
    """A failed request: connection and timeout errors (also mid-body) are transport, the rest content."""
    name = type(exc).__name__
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        cause = transport_cause(exc)
        label = "Timeout" if cause == TIMED_OUT else name  # requests calls a timeout after retries a ConnectionError
        return FetchError(f"{label}: {cause}", TRANSPORT, label=label)
    return FetchError(f"request failed ({name})", CONTENT, label=name)


def transport_cause(exc: BaseException) -> str:
    """The innermost cause of a transport failure in a few words (urllib3's reprs name objects and hosts)."""
    seen, chain = exc, [exc]
    for _ in range(8):  # requests wraps urllib3's error, which wraps the socket's
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reversed(seen.args) if isinstance(a, BaseException)), None) \
                or seen.__cause__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        seen = inner
        chain.append(seen)
    for error in reversed(chain):
        for types, words in _CAUSES:
            if isinstance(error, types):
                return words
    return type(seen).__name__


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except OSError:
        raise FetchError("file not found") from None
    if size > max_bytes:
        raise FetchError(f"{size:,} bytes exceeds the {max_bytes:,}-byte cap")
    return path.read_bytes()


# A collection's own URL schemes (e.g. the bundled sample's ``sample://``): scheme -> url -> bytes.
Schemes = Mapping[str, Callable[[str], bytes]]


def fetch_image_bytes(url: str, *, session: requests.Session | None = None, timeout_s: float = 10.0,
                      max_bytes: int = DEFAULT_MAX_BYTES, schemes: Schemes | None = None) -> bytes:
    scheme = urlparse(url).scheme.lower()
    if schemes and scheme in schemes:
        try:
            return schemes[scheme](url)
        except ValueError as exc:
            raise FetchError(str(exc)) from None
    if scheme in ("http", "https"):
        return _read_http(url, session or retrying_session(retries=1), timeout_s, max_bytes)
    if scheme == "file":
        return _read_file(Path(urlparse(url).path), max_bytes)
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return _read_file(Path(url), max_bytes)
    raise FetchError(f"unsupported URL scheme {scheme!r}")


def fetch_image(url: str, **kwargs) -> Image.Image:
    return decode_image(fetch_image_bytes(url, **kwargs))


def reason_kind(reason: str) -> str:
    """A failure reason with its numbers blanked, so like failures count together."""
    return re.sub(r"\d[\d,]*", "N", reason)


def fetch_images(urls: Sequence[str], *, max_workers: int = 8, timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, retries: int = 1, backoff_factor: float = 0.2,
                 schemes: Schemes | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[FetchResult]:
    """Fetch many images with a bounded thread pool; results keep the order of ``urls``.

    A transport failure is tried again up to ``retries`` times, ``backoff_factor`` x 1, 2, 4 ... s
    apart (at most ``MAX_BACKOFF_S``); content failures are final at once.
    """
    # No urllib3 retries: one loop retries every transport failure, also a body cut off mid-way.
    session = retrying_session(retries=0, pool_size=max_workers)

    def one(url: str) -> FetchResult:
        attempt = 0
        while True:
            attempt += 1
            try:
                image = fetch_image(url, session=session, timeout_s=timeout_s, max_bytes=max_bytes, schemes=schemes)
                return FetchResult(url, image=image, attempts=attempt)
            except FetchError as exc:
                if exc.kind != TRANSPORT or attempt > retries:
                    return FetchResult(url, error=str(exc), kind=exc.kind, label=exc.label, attempts=attempt)
            delay = min(backoff_factor * 2 ** (attempt - 1), MAX_BACKOFF_S)
            if delay > 0:
                time.sleep(delay)

    results: list[FetchResult] = []
    with session, ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        for i, result in enumerate(pool.map(one, urls), start=1):
            results.append(result)
            if progress and (i % 25 == 0 or i == len(urls)):
                progress(i, len(urls))
    return results
