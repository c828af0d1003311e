"""SSRF-safe fetch of one image from a URL an untrusted client sent (the scoring service's input).

``images.fetch_image`` trusts its URLs (local files, retries, environment proxies). Here every hop
is resolved once, every address must be globally routable unless allow-listed, and the socket goes
to that validated IP (no second DNS lookup, so DNS rebinding cannot swap in an internal address).
Every failure is a ``FetchError`` whose text never contains the URL's query string (it may hold tokens).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from PIL import Image
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError, SSLError

from thumblab_dagster.lib.embed.http import USER_AGENT
from thumblab_dagster.lib.embed.images import DEFAULT_MAX_BYTES, FetchError, decode_image
from thumblab_dagster.lib.settings import SETTING, load_settings

ALLOW_ENV = SETTING["fetch_allow_private"].env  # the variables are declared in lib/settings.py
TIMEOUT_ENV = SETTING["fetch_timeout_s"].env
MAX_BYTES_ENV = SETTING["fetch_max_bytes"].env
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HOST_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_CHUNK = 64 * 1024


def _allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """An allow-list entry as a network (IPs are /32 or /128) or a normalised host name."""
    entry = entry.strip().lower().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if not _HOST_RE.match(entry):
            raise ValueError(f"{entry!r} is not a host name, IP address or CIDR") from None
        return entry


@dataclass(frozen=True)
class FetchPolicy:
    allowed_private: tuple[str, ...] = ()  # hosts / IPs / CIDRs allowed although not globally routable
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 3
    total_timeout_s: float = 15.0  # the whole fetch, redirects included: a byte-a-second server cannot hold a worker
    _allowed: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = self.allowed_private
        if isinstance(entries, str):  # a bare "127.0.0.1" would otherwise be iterated char by char
            entries = tuple(e.strip() for e in entries.split(",") if e.strip())
        object.__setattr__(self, "allowed_private", tuple(entries))
        object.__setattr__(self, "_allowed", tuple(_allow_entry(e) for e in entries))
        if not (self.connect_timeout_s > 0 and self.read_timeout_s > 0 and self.total_timeout_s > 0
                and self.max_bytes > 0 and self.max_redirects >= 0):
            raise ValueError("timeouts and max_bytes must be positive, max_redirects non-negative")

    def allows(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(host == e if isinstance(e, str) else ip in e for e in self._allowed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, settings=None) -> FetchPolicy:
        """THUMBLAB_FETCH_ALLOW_PRIVATE, _TIMEOUT_S and _MAX_BYTES, read through ``lib/settings.py`` (or given loaded)."""
        settings = load_settings(environ) if settings is None else settings
        entries = settings.fetch_allow_private
        for entry in entries:  # each must be a host name, an IP or a CIDR
            try:
                _allow_entry(entry)
            except ValueError as exc:
                raise SETTING["fetch_allow_private"].error(",".join(entries), str(exc)) from None
        return cls(allowed_private=entries, read_timeout_s=settings.fetch_timeout_s, max_bytes=settings.fetch_max_bytes)


class _Target(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str  # path + query, sent to the server only, never put in an error message

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == (443 if self.scheme == "https" else 80) else f"{name}:{self.port}"


def _parse(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise FetchError("malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("only http(s) URLs are accepted")
    if "@" in parts.netloc:
        raise FetchError("URLs with credentials (user@host) are refused")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError("URL has no host")
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
        ipaddress.ip_address(host)
    except UnicodeError:
        raise FetchError("invalid host name") from None
    except ValueError:  # not an IP literal: must look like a DNS name (no spaces, CR/LF, ...)
        if not _HOST_RE.match(host):
            raise FetchError("invalid host name") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _non_global_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for kind in ("unspecified", "loopback", "link_local", "site_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    if ip.version == 6:  # 6to4 and Teredo carry an IPv4 address a gateway may route to
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and _non_global_kind(embedded):
            return f"{_non_global_kind(embedded)} (tunnelled)"
    return None if ip.is_global else "non-global"  # e.g. 100.64.0.0/10 carrier-grade NAT


def _resolve(t: _Target, policy: FetchPolicy) -> str:
    """The address to connect to, after checking EVERY address the name resolves to."""
    try:
        infos = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError(f"cannot resolve host {t.host}") from None
    addrs = list(dict.fromkeys(info[4][0] for info in infos))
    if not addrs:
        raise FetchError(f"cannot resolve host {t.host}")
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        ip = (ip.ipv4_mapped or ip) if ip.version == 6 else ip  # ::ffff:10.0.0.1 is 10.0.0.1
        kind = _non_global_kind(ip)
        if kind and not policy.allows(t.host, ip):
            what = str(ip) if t.host == str(ip) else f"{t.host} resolves to {ip}, which"
            article = "an" if kind[0] in "aeiou" else "a"
            raise FetchError(f"refused: {what} is {article} {kind} address (set {ALLOW_ENV} to allow it)")
    return addrs[0]


def _read(resp: urllib3.BaseHTTPResponse, max_bytes: int, deadline: float) -> tuple[str | None, bytes]:
    """(redirect location, b"") or (None, body) for one response, enforcing status, type and byte cap."""
    if resp.status in REDIRECT_CODES and resp.headers.get("Location"):
        return resp.headers["Location"], b""
    if resp.status != 200:
        raise FetchError(f"HTTP {resp.status}")
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise FetchError(f"content type {ctype} is not an image")
    declared = resp.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"{int(declared):,} bytes exceeds the {max_bytes:,}-byte cap")
    chunks, size = [], 0
    for chunk in resp.stream(_CHUNK, decode_content=False):
        if time.monotonic() > deadline:
            raise FetchError("took too long (total time limit)")
        size += len(chunk)
        if size > max_bytes:  # stop at once: a lying or absent Content-Length must not fill memory
            raise FetchError(f"body exceeds the {max_bytes:,}-byte cap")
        chunks.append(chunk)
    return None, b"".join(chunks)


def _get(t: _Target, ip: str, policy: FetchPolicy, deadline: float) -> tuple[str | None, bytes]:
    """One GET to the validated ``ip``; urllib3 pools ignore proxy env vars and retry nothing here."""
    where = f"{t.host}:{t.port}"
    tls = {}
    if t.scheme == "https":  # certificate and SNI are checked against the name, not the IP we dial
        tls = dict(server_hostname=t.host, assert_hostname=t.host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    pool_cls = urllib3.HTTPSConnectionPool if t.scheme == "https" else urllib3.HTTPConnectionPool
    left = max(deadline - time.monotonic(), 0.001)
    timeout = urllib3.Timeout(connect=min(policy.connect_timeout_s, left), read=min(policy.read_timeout_s, left))
    # identity encoding: a gzip body could inflate far past max_bytes, and images are compressed anyway
    headers = {"Host": t.host_header, "User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}
    try:
        with pool_cls(ip, t.port, timeout=timeout, retries=False, maxsize=1, **tls) as pool:
            resp = pool.urlopen("GET", t.path, headers=headers, redirect=False, retries=False,
                                preload_content=False, decode_content=False, assert_same_host=False)
            try:
                return _read(resp, policy.max_bytes, deadline)
            finally:
                resp.close()
    except NewConnectionError:  # a ConnectTimeoutError subclass, so it goes first
        raise FetchError(f"could not connect to {where}") from None
    except ConnectTimeoutError:
        raise FetchError(f"timed out connecting to {where}") from None
    except ReadTimeoutError:
        raise FetchError(f"timed out reading from {where}") from None
    except SSLError:
        raise FetchError(f"TLS handshake with {t.host} failed") from None
    except (HTTPError, OSError) as exc:
        raise FetchError(f"connection to {where} failed ({type(exc).__name__})") from None
    except ValueError:  # e.g. http.client refusing control characters in the path
        raise FetchError("malformed URL") from None


def fetch_untrusted_image(url: str, policy: FetchPolicy = FetchPolicy()) -> Image.Image:
    """Fetch and decode one image from an untrusted http(s) URL; every failure is a ``FetchError``."""
    deadline = time.monotonic() + policy.total_timeout_s
    for _hop in range(policy.max_redirects + 1):
        target = _parse(url)
        location, body = _get(target, _resolve(target, policy), policy, deadline)
        if location is None:
            return decode_image(body, None)
        url = urljoin(url, location)  # re-parsed and re-validated on the next hop
    raise FetchError(f"too many redirects (more than {policy.max_redirects})")
