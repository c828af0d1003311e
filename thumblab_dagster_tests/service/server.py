"""Helpers for the service tests: a real uvicorn server on loopback, an image server."""

import contextlib
import http.server
import socket
import threading
from urllib.parse import urlsplit

import requests
import uvicorn

from thumblab_dagster.lib.embed.untrusted_fetch import FetchPolicy

TOKEN = "internal-test-token-123"
N = 30


@contextlib.contextmanager
def serving(app):
    """``app`` under a real uvicorn server on a loopback port (requests queue until it is up)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


class ImageHandler(http.server.BaseHTTPRequestHandler):
    png = b""
    pictures: dict[str, bytes] = {}  # path -> PNG: distinct images, for tests that need several

    def do_GET(self):
        body, ctype = (self.png, "image/png") if self.path.startswith("/thumb") else (b"<html>hi</html>", "text/html")
        if self.path in self.pictures:
            body, ctype = self.pictures[self.path], "image/png"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def loopback_images(*bases: str, **limits) -> FetchPolicy:
    """A fetch policy allowing exactly the host:port of each image server ``bases`` names (an allow-list
    entry without a port allows only 80 and 443)."""
    return FetchPolicy(allowed_private=tuple(urlsplit(b).netloc for b in bases), **limits)


def score(base, body):
    return requests.post(f"{base}/v1/score", json=body, timeout=60)
