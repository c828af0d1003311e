"""The one image fetcher: http(s), local files, and schemes a collection registers (``sample://``).

Every failure is a ``FetchError`` with a short reason, so a caller can skip and count it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from PIL import Image

from thumblab_dagster.lib.embed.http import retrying_session

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
# Thumbnails are at most 1280x720; anything far larger is a decompression bomb, not a thumbnail.
MAX_PIXELS = 40_000_000
MIN_SIDE = 8
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


class FetchError(Exception):
    """An image could not be fetched or decoded; ``str()`` is a short, loggable reason."""


@dataclass
class FetchResult:
    url: str
    image: Image.Image | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


def decode_image(data: bytes, source: str | None = None) -> Image.Image:
    """Decode bytes to an RGB image, refusing non-images, bombs and degenerate sizes."""
    prefix = f"{source}: " if source else ""
    if not data:
        raise FetchError(f"{prefix}empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise FetchError(f"{prefix}unsupported image format {img.format}")
            if img.width * img.height > MAX_PIXELS:
                raise FetchError(f"{prefix}{img.width}x{img.height} pixels is too large")
            if min(img.size) < MIN_SIDE:
                raise FetchError(f"{prefix}{img.width}x{img.height} pixels is too small")
            img.load()
    except FetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FetchError(f"{prefix}decompression bomb refused") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise FetchError(f"{prefix}not a readable image ({type(exc).__name__})") from None
    return img.convert("RGB")


def _read_http(url: str, session: requests.Session, timeout_s: float, max_bytes: int) -> bytes:
    try:
        with session.get(url, timeout=(min(timeout_s, 5.0), timeout_s), stream=True) as resp:
            if resp.status_code != 200:
                raise FetchError(f"HTTP {resp.status_code}")
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
        raise FetchError(f"request failed ({type(exc).__name__})") from None


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
                 max_bytes: int = DEFAULT_MAX_BYTES, retries: int = 1, schemes: Schemes | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[FetchResult]:
    """Fetch many images with a bounded thread pool; results keep the order of ``urls``."""
    session = retrying_session(retries=retries, backoff_factor=0.2, pool_size=max_workers)

    def one(url: str) -> FetchResult:
        try:
            return FetchResult(url, image=fetch_image(url, session=session, timeout_s=timeout_s,
                                                       max_bytes=max_bytes, schemes=schemes))
        except FetchError as exc:
            return FetchResult(url, error=str(exc))

    results: list[FetchResult] = []
    with session, ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        for i, result in enumerate(pool.map(one, urls), start=1):
            results.append(result)
            if progress and (i % 25 == 0 or i == len(urls)):
                progress(i, len(urls))
    return results
