"""A hostile thumbnail server on loopback: it answers every connection a byte at a time.

Used by the fetch-deadline tests here and by the service's (thumblab_dagster_tests/service/test_fetch_bounds.py).
Bounded: a few bytes a second, at most ``limit_s`` per connection, and a connection stops as soon as
a write fails (the client went away) or the server is closed.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time

PNG_START = b"\x89PNG\r\n\x1a\n"
MODES = ("headers", "body", "body-until-close", "tls")


def _payload(mode: str) -> tuple[bytes, bytes]:
    """(sent at once, then trickled forever) for one mode."""
    if mode == "headers":  # the status line and headers trickle
        return b"", b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + b"X-Pad: " + b"a" * 10_000
    if mode == "body":  # prompt headers, a body that never finishes
        return b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n", PNG_START
    if mode == "body-until-close":  # no length: the body ends when the connection does
        return b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n", PNG_START
    if mode == "tls":  # where the ServerHello should be: a handshake record that never completes
        return b"", b"\x16\x03\x03\x40\x00\x02"
    raise ValueError(f"mode must be one of {MODES}")


class Trickler:
    """``with Trickler("body") as t: t.url("/x.png")``; ``wait_for(n)`` waits until n connections are open,
    ``wait_idle()`` until none is; ``requests`` holds (time accepted, path) for each connection."""

    def __init__(self, mode: str = "body", *, interval_s: float = 0.25, limit_s: float = 30.0):
        self.prompt, self.slow = _payload(mode)
        self.scheme = "https" if mode == "tls" else "http"
        self.interval_s, self.limit_s = interval_s, limit_s
        self.durations: list[float] = []  # seconds each finished connection was held
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._open = 0
        self.requests: list[tuple[float, str]] = []
        self._threads: list[threading.Thread] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def url(self, path: str = "/thumb.png") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Trickler:
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        except OSError:
            pass
        self._sock.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)

    @property
    def open_connections(self) -> int:
        with self._changed:
            return self._open

    def wait_for(self, n: int, timeout: float = 20.0) -> bool:
        """True once ``n`` connections are being trickled at the same time."""
        with self._changed:
            return self._changed.wait_for(lambda: self._open >= n, timeout)

    def wait_idle(self, timeout: float = 20.0) -> bool:
        """True once every connection has stopped (the clients went away)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._open == 0, timeout)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed by __exit__
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        with self._changed:
            self._open += 1
            self._changed.notify_all()
        try:
            with conn:
                conn.settimeout(5)
                request = conn.recv(65536)  # the request (or the TLS ClientHello): only its path is kept
                path = request.split(b" ")[1].decode("latin-1") if request.startswith(b"GET ") else ""
                with self._changed:
                    self.requests.append((start, path))
                conn.sendall(self.prompt)
                for byte in itertools.chain(self.slow, itertools.repeat(0)):
                    if self._stop.wait(self.interval_s) or time.monotonic() - start > self.limit_s:
                        return
                    conn.sendall(bytes([byte]))  # raises once the client has gone
        except OSError:
            pass
        finally:
            with self._changed:
                self._open -= 1
                self.durations.append(time.monotonic() - start)
                self._changed.notify_all()
