"""SSRF-safe fetch of one image from a URL an untrusted client sent (the scoring service's input).

``images.fetch_image`` trusts its URLs (local files, retries, environment proxies). Here every hop
is resolved once, every address must be globally routable unless allow-listed, and the socket goes
to that validated IP (no second DNS lookup, so DNS rebinding cannot swap in an internal address).
Every failure is a ``FetchError`` whose text never contains the URL's query string (it may hold tokens);
network failures are ``TRANSPORT``, refusals and bad answers ``CONTENT`` (see ``images``).

The whole fetch has one deadline (``total_timeout_s``), however the server sends its bytes: every
socket a fetch opens is shut down when it passes, so a read blocked anywhere (TLS handshake, headers,
body) returns at once. The allow-list names hosts, IPs or CIDRs, each with an optional port; an entry
without a port allows only the scheme's default port.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
import urllib3.connection
from PIL import Image
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError, SSLError

from thumblab_dagster.lib.embed.http import USER_AGENT
from thumblab_dagster.lib.embed.images import DEFAULT_MAX_BYTES, TRANSPORT, FetchError, decode_image, status_error
from thumblab_dagster.lib.settings import SETTING, load_settings

ALLOW_ENV = SETTING["fetch_allow_private"].env  # the variables are declared in lib/settings.py
TIMEOUT_ENV = SETTING["fetch_timeout_s"].env
MAX_BYTES_ENV = SETTING["fetch_max_bytes"].env
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_HOST_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_CHUNK = 64 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Allow(NamedTuple):
    """One allow-list entry: a network (IPs are /32 or /128) or a host name, and its port."""
    where: ipaddress.IPv4Network | ipaddress.IPv6Network | str
    port: int | None  # None: the URL scheme's default port only
    host: str         # the entry without its port, for messages

    def names(self, host: str, ip: Address) -> bool:
        return host == self.where if isinstance(self.where, str) else ip in self.where

    def opens(self, port: int, scheme: str) -> bool:
        return port == (DEFAULT_PORTS[scheme] if self.port is None else self.port)


def _split_port(entry: str) -> tuple[str, str | None]:
    """``host[:port]``, ``[v6 or v6 CIDR][:port]`` or a bare IPv6 (more than one colon: no port)."""
    if entry.startswith("["):
        host, closed, rest = entry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r} is not a host name, IP address or CIDR")
        return host, rest[1:] if rest else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, port
    return entry, None


def _allow_entry(entry: str) -> _Allow:
    """An allow-list entry parsed, or ``ValueError`` saying what is wrong with it."""
    entry = entry.strip().lower()
    host, port = _split_port(entry)
    host = host.rstrip(".")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{entry!r} has a bad port (1 to 65535)")
    try:
        where = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if not _HOST_RE.match(host):
            raise ValueError(f"{entry!r} is not a host name, IP address or CIDR") from None
        where = host
    return _Allow(where, int(port) if port is not None else None, host)


@dataclass(frozen=True)
class FetchPolicy:
    """What ``/v1/score`` may fetch, how long it may take, and how much of it at once."""
    allowed_private: tuple[str, ...] = ()  # hosts / IPs / CIDRs[:port] allowed although not globally routable
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 3
    total_timeout_s: float = 15.0  # the whole fetch, redirects included: a byte-a-second server cannot hold a worker
    max_pixels: int = SETTING["fetch_max_pixels"].default  # judged from the header, before decoding
    pool_size: int = SETTING["fetch_pool_size"].default  # fetches at once, all requests together (see FetchPool)
    per_request: int = SETTING["fetch_per_request"].default  # fetches at once for one request
    _allowed: tuple[_Allow, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = self.allowed_private
        if isinstance(entries, str):  # a bare "127.0.0.1" would otherwise be iterated char by char
            entries = tuple(e.strip() for e in entries.split(",") if e.strip())
        object.__setattr__(self, "allowed_private", tuple(entries))
        object.__setattr__(self, "_allowed", tuple(_allow_entry(e) for e in entries))
        if not (self.connect_timeout_s > 0 and self.read_timeout_s > 0 and self.total_timeout_s > 0
                and self.max_bytes > 0 and self.max_redirects >= 0):
            raise ValueError("timeouts and max_bytes must be positive, max_redirects non-negative")
        if not (self.max_pixels > 0 and self.pool_size > 0 and self.per_request > 0):
            raise ValueError("max_pixels, pool_size and per_request must be positive")

    def allows(self, host: str, ip: Address, port: int, scheme: str = "http") -> bool:
        return any(a.names(host, ip) and a.opens(port, scheme) for a in self._allowed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, settings=None) -> FetchPolicy:
        """THUMBLAB_FETCH_ALLOW_PRIVATE, _TIMEOUT_S, _MAX_BYTES, _MAX_PIXELS, _POOL_SIZE and _PER_REQUEST, read
        through ``lib/settings.py`` (or given loaded)."""
        settings = load_settings(environ) if settings is None else settings
        entries = settings.fetch_allow_private
        for entry in entries:  # each must be a host name, an IP or a CIDR, with an optional port
            try:
                _allow_entry(entry)
            except ValueError as exc:
                raise SETTING["fetch_allow_private"].error(",".join(entries), str(exc)) from None
        return cls(allowed_private=entries, read_timeout_s=settings.fetch_timeout_s, max_bytes=settings.fetch_max_bytes,
                   max_pixels=settings.fetch_max_pixels, pool_size=settings.fetch_pool_size,
                   per_request=settings.fetch_per_request)


class _Target(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str  # path + query, sent to the server only, never put in an error message

    @property
    def host_header(self) -> str:
        return self.name if self.port == DEFAULT_PORTS[self.scheme] else self.authority

    @property
    def name(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def authority(self) -> str:
        return f"{self.name}:{self.port}"


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
    return _Target(scheme, host, port or DEFAULT_PORTS[scheme], path)


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
        raise FetchError(f"cannot resolve host {t.host}", TRANSPORT, label="cannot resolve host") from None
    addrs = list(dict.fromkeys(info[4][0] for info in infos))
    if not addrs:
        raise FetchError(f"cannot resolve host {t.host}", TRANSPORT, label="cannot resolve host")
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        ip = (ip.ipv4_mapped or ip) if ip.version == 6 else ip  # ::ffff:10.0.0.1 is 10.0.0.1
        kind = _non_global_kind(ip)
        if kind:
            _check_allowed(t, ip, kind, policy)
    return addrs[0]


def _check_allowed(t: _Target, ip: Address, kind: str, policy: FetchPolicy) -> None:
    """A non-global address must be allow-listed, and with this port (no port: the scheme's default only)."""
    named = [a for a in policy._allowed if a.names(t.host, ip)]
    entry = t.name if t.port == DEFAULT_PORTS[t.scheme] else t.authority  # what would allow exactly this
    if not named:
        what = str(ip) if t.host == str(ip) else f"{t.host} resolves to {ip}, which"
        article = "an" if kind[0] in "aeiou" else "a"
        raise FetchError(f"refused: {what} is {article} {kind} address (to allow it, add {entry} to {ALLOW_ENV})")
    if not any(a.opens(t.port, t.scheme) for a in named):
        raise FetchError(f"refused: {t.authority} is not an allowed port for {named[0].host} "
                         f"(add {entry} to {ALLOW_ENV})")


def _read(resp: urllib3.BaseHTTPResponse, max_bytes: int, deadline: _Deadline) -> tuple[str | None, bytes]:
    """(redirect location, b"") or (None, body) for one response, enforcing status, type and byte cap."""
    if resp.status in REDIRECT_CODES and resp.headers.get("Location"):
        return resp.headers["Location"], b""
    if resp.status != 200:
        raise status_error(resp.status)  # 5xx, 408 and 429 are transport, the rest content
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise FetchError(f"content type {ctype} is not an image")
    declared = resp.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"{int(declared):,} bytes exceeds the {max_bytes:,}-byte cap")
    chunks, size = [], 0
    for chunk in resp.stream(_CHUNK, decode_content=False):
        if deadline.passed or time.monotonic() > deadline.at:
            raise deadline.error()
        size += len(chunk)
        if size > max_bytes:  # stop at once: a lying or absent Content-Length must not fill memory
            raise FetchError(f"body exceeds the {max_bytes:,}-byte cap")
        chunks.append(chunk)
    return None, b"".join(chunks)


class _Deadline:
    """One fetch's time limit, kept however the server sends its bytes.

    Per-read socket timeouts alone let a server that sends a byte every few seconds hold a fetch for
    hours (TLS handshake and headers included). Every socket the fetch opens is registered here; at
    the deadline a timer shuts them down, which wakes a read blocked anywhere in urllib3, http.client
    or ssl. Each is registered as a duplicate descriptor: it stays valid (and cannot be reused by
    another connection) however the fetch wraps or closes the original, until ``release``.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.passed = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return max(self.at - time.monotonic(), 0.001)

    def error(self) -> FetchError:
        return FetchError(f"took too long (over the {self.seconds:g} s limit for the whole fetch)", TRANSPORT,
                          label="took too long")

    def watch(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            if not self.passed:
                self._socks.append(dup)
                return
        _shut(dup)  # a hop that starts after the deadline fails at once
        dup.close()

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._socks:
                _shut(sock)

    def release(self) -> None:
        """Forget this hop's sockets (its connection is closed or about to be)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            sock.close()

    def cancel(self) -> None:
        self._timer.cancel()
        self.release()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass


class _Watched:
    """A urllib3 connection whose socket is registered with the fetch's ``_Deadline`` once it exists
    (after the TCP connect, which has its own timeout; before the TLS handshake)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def _connection_error(exc: Exception, t: _Target) -> FetchError:
    """A failed connection or exchange in one line (transport), or a URL http.client refused (content)."""
    where = t.authority
    if isinstance(exc, NewConnectionError):  # a ConnectTimeoutError subclass, so it goes first
        return FetchError(f"could not connect to {where}", TRANSPORT, label="could not connect")
    if isinstance(exc, ConnectTimeoutError):
        return FetchError(f"timed out connecting to {where}", TRANSPORT, label="timed out connecting")
    if isinstance(exc, ReadTimeoutError):
        return FetchError(f"timed out reading from {where}", TRANSPORT, label="timed out reading")
    if isinstance(exc, SSLError | ssl.SSLError):
        return FetchError(f"TLS handshake with {t.host} failed", TRANSPORT, label="TLS handshake failed")
    if isinstance(exc, HTTPError | OSError):
        name = type(exc).__name__
        return FetchError(f"connection to {where} failed ({name})", TRANSPORT, label=f"connection failed ({name})")
    return FetchError("malformed URL")  # e.g. http.client refusing control characters in the path


def _get(t: _Target, ip: str, policy: FetchPolicy, deadline: _Deadline) -> tuple[str | None, bytes]:
    """One GET to the validated ``ip``; urllib3 pools ignore proxy env vars and retry nothing here."""
    tls = {}
    if t.scheme == "https":  # certificate and SNI are checked against the name, not the IP we dial
        tls = dict(server_hostname=t.host, assert_hostname=t.host, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
    pool_cls = _HTTPSPool if t.scheme == "https" else _HTTPPool
    left = deadline.left()
    timeout = urllib3.Timeout(connect=min(policy.connect_timeout_s, left), read=min(policy.read_timeout_s, left))
    # identity encoding: a gzip body could inflate far past max_bytes, and images are compressed anyway
    headers = {"Host": t.host_header, "User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}
    try:
        with pool_cls(ip, t.port, timeout=timeout, retries=False, maxsize=1, deadline=deadline, **tls) as pool:
            resp = pool.urlopen("GET", t.path, headers=headers, redirect=False, retries=False,
                                preload_content=False, decode_content=False, assert_same_host=False)
            try:
                location, body = _read(resp, policy.max_bytes, deadline)
            finally:
                resp.close()
    except (HTTPError, OSError, ValueError) as exc:
        raise (deadline.error() if deadline.passed else _connection_error(exc, t)) from None
    finally:
        deadline.release()
    if deadline.passed:  # a body without Content-Length ends at the shutdown as if it were complete
        raise deadline.error()
    return location, body


def fetch_untrusted_image(url: str, policy: FetchPolicy = FetchPolicy()) -> Image.Image:
    """Fetch and decode one image from an untrusted http(s) URL; every failure is a ``FetchError``."""
    deadline = _Deadline(policy.total_timeout_s)
    try:
        for _hop in range(policy.max_redirects + 1):
            target = _parse(url)
            location, body = _get(target, _resolve(target, policy), policy, deadline)
            if location is None:
                break
            url = urljoin(url, location)  # re-parsed and re-validated on the next hop
        else:
            raise FetchError(f"too many redirects (more than {policy.max_redirects})")
    finally:
        deadline.cancel()
    return decode_image(body, None, max_pixels=policy.max_pixels)
