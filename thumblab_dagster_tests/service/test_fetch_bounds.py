"""Bounded fetching through a real uvicorn on loopback: a trickling thumbnail server costs its own request
at most the deadline per thumbnail and never holds up another request; ports and decode size are enforced."""

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.embed.trickle import Trickler
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche
from thumblab_dagster_tests.service.server import loopback_images, score, serving

DEADLINE_S = 3.0
POOL, PER_REQUEST = 4, 2


def _encoded(size, fmt, mode="RGB", color=(20, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


class _Pictures(BaseHTTPRequestHandler):
    """``/to/<port>``: a redirect to that port on 127.0.0.1; ``/huge.png``, ``/large.jpg``: big images."""
    routes: dict[str, bytes] = {}

    def do_GET(self):
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.path.split('/')[2]}/thumb.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if self.path.endswith(".png") else "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bounded(service, clip, tmp_path_factory):
    """The service with a 3 s fetch deadline and a pool of 4 (2 per request), a trickling server, a picture server."""
    _, images, _ = service
    root = tmp_path_factory.mktemp("bounded")
    ids = [f"b{i:03d}" for i in range(30)]
    publish_niche(root / "pub", "tech", clustered(30, d=clip.dim, seed=11), ids, snapshot="2026-11-21",
                  titles=clustered(30, d=clip.dim, seed=12), embedding=clip.weights.as_dict())
    _Pictures.routes = {"/huge.png": _encoded((6000, 6000), "PNG", mode="1", color=1),  # 36 MP in ~16 KB
                        "/large.jpg": _encoded((4000, 3000), "JPEG")}
    pictures = ThreadingHTTPServer(("127.0.0.1", 0), _Pictures)
    threading.Thread(target=pictures.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    pictures_url = f"http://127.0.0.1:{pictures.server_port}"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # allowed, but nothing listens there
    with Trickler("body") as slow:
        policy = loopback_images(images, pictures_url, slow.url(), dead, total_timeout_s=DEADLINE_S, pool_size=POOL,
                                 per_request=PER_REQUEST)
        with serving(create_app(ServiceSettings(publish_dir=str(root / "pub"), fetch=policy), clip=clip)) as base:
            warm = score(base, {"title": "warm", "thumbnails": [{"id": "a", "url": f"{images}/thumb.png"}]})
            assert warm.status_code == 200  # first forwards done: the timed requests measure fetching only
            yield base, images, pictures_url, slow, dead
    pictures.shutdown()
    pictures.server_close()


def _errors(resp) -> dict[str, str | None]:
    assert resp.status_code == 200, resp.text
    return {t["id"]: t["error"] for t in resp.json()["thumbnails"]}


def test_a_trickling_thumbnail_fails_within_the_deadline_and_the_rest_is_scored(bounded):
    base, images, _, slow, _ = bounded
    start = time.monotonic()
    resp = score(base, {"thumbnails": [{"id": "slow", "url": slow.url("/t.png?token=SECRET")},
                                       {"id": "good", "url": f"{images}/thumb.png"}]})
    elapsed = time.monotonic() - start
    errors = _errors(resp)
    assert errors["slow"] == f"could not fetch the thumbnail: took too long (over the {DEADLINE_S:g} s limit for " \
                             "the whole fetch)"
    assert errors["good"] is None and "SECRET" not in resp.text
    assert elapsed < DEADLINE_S + 1
    assert slow.wait_idle()  # the trickling server saw the service go away


def test_a_slow_request_holds_only_its_share_and_a_normal_one_does_not_wait(bounded):
    base, images, _, slow, _ = bounded
    finished = {}

    def post(name, thumbnails):
        resp = score(base, {"thumbnails": thumbnails})
        finished[name] = (time.monotonic(), resp)

    # as many trickling thumbnails as the whole pool: unbounded, they would take every worker
    trickling = [{"id": f"slow{i}", "url": slow.url(f"/share/{i}.png")} for i in range(POOL)]
    start = time.monotonic()
    slow_request = threading.Thread(target=post, args=("slow", trickling))
    slow_request.start()
    assert slow.wait_for(PER_REQUEST)  # the slow request holds its share of the fetch workers
    post("normal", [{"id": "good", "url": f"{images}/thumb.png"}])
    slow_request.join(60)
    normal_done, normal = finished["normal"]
    slow_done, slow_resp = finished["slow"]
    assert _errors(normal) == {"good": None}
    assert normal_done < slow_done  # it did not wait behind the trickling request
    assert all("took too long" in e for e in _errors(slow_resp).values())
    # its thumbnails went PER_REQUEST at a time: the next one only started when one had hit the deadline
    accepted = sorted(t for t, path in slow.requests if path.startswith("/share/"))
    assert len(accepted) == POOL and accepted[PER_REQUEST] - accepted[0] > DEADLINE_S / 2
    assert slow_done - start < (POOL // PER_REQUEST) * (DEADLINE_S + 1)  # each within the deadline + 1 s
    assert slow.wait_idle()


def test_a_redirect_to_a_port_not_allowed_is_refused(bounded):
    base, images, pictures, _, _ = bounded
    allowed_port, other = int(images.rsplit(":", 1)[1]), int(base.rsplit(":", 1)[1])  # the service's own port
    errors = _errors(score(base, {"thumbnails": [{"id": "ok", "url": f"{pictures}/to/{allowed_port}"},
                                                 {"id": "refused", "url": f"{pictures}/to/{other}"}]}))
    assert errors == {"ok": None, "refused": f"could not fetch the thumbnail: refused: 127.0.0.1:{other} is not an "
                                             f"allowed port for 127.0.0.1 (add 127.0.0.1:{other} to "
                                             "THUMBLAB_FETCH_ALLOW_PRIVATE)"}


def test_a_36_megapixel_png_is_refused_and_a_large_jpeg_is_scored(bounded):
    base, _, pictures, _, _ = bounded
    errors = _errors(score(base, {"thumbnails": [{"id": "huge", "url": f"{pictures}/huge.png"},
                                                 {"id": "large", "url": f"{pictures}/large.jpg"}]}))
    assert errors == {"huge": "could not fetch the thumbnail: 6000x6000 pixels is too large (the limit is "
                              "16,777,216 pixels)", "large": None}


def test_an_allowed_port_where_nothing_listens_is_a_per_thumbnail_error(bounded):
    base, images, _, _, dead = bounded
    errors = _errors(score(base, {"thumbnails": [{"id": "dead", "url": f"{dead}/thumb.png"},
                                                 {"id": "good", "url": f"{images}/thumb.png"}]}))
    assert errors == {"dead": f"could not fetch the thumbnail: could not connect to {dead.removeprefix('http://')}",
                      "good": None}
