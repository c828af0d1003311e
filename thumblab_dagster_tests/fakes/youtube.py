"""A loopback stand-in for the YouTube Data API v3 and the thumbnail CDN.

It answers ``GET /youtube/v3/videos`` in the documented JSON shape (``items`` of ``youtube#video``
resources with ``snippet`` and ``statistics``, ``nextPageToken`` paging, and Google's error body
``{"error": {"code", "message", "errors": [{"reason", ...}]}}``), serves thumbnails under
``/thumbs/``, and records every request so tests can assert what was sent.

Faults: ``drop_thumbs_after = N`` closes the connection without a response for every thumbnail
request after N were served (set it back to None to recover); ``thumb_faults[name]`` is a queue
of faults for the next requests of one thumbnail (``DROP`` or an HTTP status), served normally
once empty; a thumbnail whose body is ``CUT`` sends its headers and half a body, then closes.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image, ImageDraw


def jpeg(seed: int, size=(320, 180)) -> bytes:
    img = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256))
    draw = ImageDraw.Draw(img)
    draw.rectangle([seed % 100, 20, seed % 100 + 120, 140], fill=((seed * 11) % 256, 200, (seed * 7) % 256))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


@dataclass
class FakeYouTube:
    charts: dict[str, list[dict]] = field(default_factory=dict)  # category id -> items
    errors: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # category -> queued (status, reason)
    thumbs: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)  # name -> (status, ctype, body)
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""
    thumb_base: str = ""
    drop_thumbs_after: int | None = None  # thumbnails served before every later one is dropped; None: never
    thumb_faults: dict[str, list] = field(default_factory=dict)  # name -> queued DROP or status, one per request
    thumbs_served: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def thumb_requests(self, name: str) -> int:
        """How many requests asked for thumbnail ``name`` (retries included)."""
        return sum(1 for r in self.requests if r["path"] == f"/thumbs/{name}")

    def thumb_fault(self, name: str) -> str | int | None:
        """The fault for this request of thumbnail ``name`` (DROP, a status, None: serve it), counting served ones."""
        with self._lock:
            queued = self.thumb_faults.get(name)
            if queued:
                return queued.pop(0)
            if self.drop_thumbs_after is not None and self.thumbs_served >= self.drop_thumbs_after:
                return DROP
            self.thumbs_served += 1
            return None

    def add_videos(self, category: str, prefix: str, count: int, now: datetime | None = None) -> list[str]:
        """Append ``count`` videos (with good JPEG thumbnails) to a category's chart."""
        now = now or datetime.now(timezone.utc)
        ids = []
        start = len(self.charts.get(category, []))
        for i in range(start, start + count):
            vid = f"{prefix}{i:03d}"
            self.thumbs[f"{vid}.jpg"] = (200, "image/jpeg", jpeg(zlib.crc32(vid.encode()) % 1000))
            self.charts.setdefault(category, []).append(video_item(vid, category, f"{self.thumb_base}/{vid}.jpg",
                                                                   now - timedelta(hours=5 + i)))
            ids.append(vid)
        return ids


def video_item(vid: str, category: str, thumb_url: str, published: datetime, views: int = 50_000) -> dict:
    return {
        "kind": "youtube#video", "etag": "x", "id": vid,
        "snippet": {
            "publishedAt": published.strftime("%Y-%m-%dT%H:%M:%SZ"), "channelId": "UCfake",
            "title": f"Video {vid}", "description": "desc", "channelTitle": "Fake Channel",
            "categoryId": category,
            "thumbnails": {
                "default": {"url": thumb_url.replace(".jpg", "_small.jpg"), "width": 120, "height": 90},
                "high": {"url": thumb_url, "width": 480, "height": 360},
            },
        },
        "statistics": {"viewCount": str(views), "likeCount": "10"},
    }


CUT = b"cut"  # a thumbnail body meaning: send headers and half a JPEG, then close the connection
DROP = "drop"  # a thumbnail fault: close the connection without a response


def _error_body(status: int, reason: str) -> bytes:
    return json.dumps({"error": {"code": status, "message": f"fake {reason}",
                                 "errors": [{"message": f"fake {reason}", "domain": "youtube", "reason": reason}]}}).encode()


def _handler(state: FakeYouTube):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, ctype: str, body: bytes, length: bool = True):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            state.requests.append({"path": url.path, "query": query, "raw_path": self.path,
                                   "headers": dict(self.headers.items())})
            if url.path == "/youtube/v3/videos":
                return self._videos(query)
            if url.path.startswith("/thumbs/"):
                name = url.path[len("/thumbs/"):]
                fault = state.thumb_fault(name)
                if fault == DROP:
                    return self._drop()
                if fault is not None:
                    return self._send(fault, "text/plain", b"fault")
                if name == "oversized.jpg":  # streamed without Content-Length, bigger than any cap
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"\xff" * 65536)
                    return
                status, ctype, body = state.thumbs.get(name, (404, "text/plain", b"not found"))
                if body == CUT:
                    return self._cut(jpeg(7))
                return self._send(status, ctype, body)
            self._send(404, "text/plain", b"no such path")

        def _drop(self):
            """Close the connection without a response, as a server that went away does."""
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _cut(self, body: bytes):
            """Promise the whole body, send half, close: the client sees the connection break mid-response."""
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._drop()

        def _videos(self, q):
            category = q.get("videoCategoryId", "")
            queued = state.errors.get(category)
            if queued:
                status, reason = queued.pop(0)
                return self._send(status, "application/json", _error_body(status, reason))
            items = state.charts.get(category, [])
            start = int(q.get("pageToken") or 0)
            size = int(q.get("maxResults", 5))
            page = items[start:start + size]
            body = {"kind": "youtube#videoListResponse", "items": page,
                    "pageInfo": {"totalResults": len(items), "resultsPerPage": size}}
            if start + size < len(items):
                body["nextPageToken"] = str(start + size)
            self._send(200, "application/json; charset=UTF-8", json.dumps(body).encode())

    return Handler


class FakeYouTubeServer:
    def __init__(self):
        self.state = FakeYouTube()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        host, port = self.httpd.server_address
        self.state.base_url = f"http://{host}:{port}/youtube/v3"
        self.state.thumb_base = f"http://{host}:{port}/thumbs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeYouTube:
        self.thread.start()
        return self.state

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
