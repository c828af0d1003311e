"""Bounded fetching of untrusted thumbnails: one deadline however the bytes come, allow-list ports,
decode memory (pixel cap before decoding, JPEG draft, reduce, a limit on concurrent decodes)."""

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from thumblab_dagster.lib.embed import images
from thumblab_dagster.lib.embed.images import CONTENT, DECODE_SIDE, TRANSPORT, FetchError, decode_image
from thumblab_dagster.lib.embed.untrusted_fetch import ALLOW_ENV, FetchPolicy, _allow_entry, fetch_untrusted_image
from thumblab_dagster_tests.embed.trickle import Trickler

DEADLINE_S = 1.5  # short, so each trickle test takes about this long


def _encoded(size, fmt="PNG", mode="RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


# --- one deadline for the whole fetch ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["headers", "body", "body-until-close", "tls"])
def test_a_trickling_server_fails_within_the_deadline(mode):
    # a byte every 0.25 s: no single read ever times out (read timeout 5 s); only the total deadline stops it
    with Trickler(mode) as slow:
        policy = FetchPolicy(allowed_private=(f"127.0.0.1:{slow.port}",), total_timeout_s=DEADLINE_S)
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"^took too long \(over the 1.5 s limit for the whole fetch\)$") as err:
            fetch_untrusted_image(slow.url("/x.png?token=SECRET"), policy)
        assert time.monotonic() - start < DEADLINE_S + 1
        assert err.value.kind == TRANSPORT and err.value.label == "took too long"
        assert "SECRET" not in str(err.value)
        assert slow.wait_idle()  # the server saw the client go away, soon after the deadline
        assert len(slow.durations) == 1 and slow.durations[0] < DEADLINE_S + 1


def test_the_deadline_spans_redirects():
    with Trickler("body") as slow:
        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302)
                self.send_header("Location", slow.url())
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        with ThreadingHTTPServer(("127.0.0.1", 0), Redirect) as hop:
            threading.Thread(target=hop.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            allowed = (f"127.0.0.1:{hop.server_port}", f"127.0.0.1:{slow.port}")
            start = time.monotonic()
            with pytest.raises(FetchError, match="took too long"):
                fetch_untrusted_image(f"http://127.0.0.1:{hop.server_port}/a.png",
                                      FetchPolicy(allowed_private=allowed, total_timeout_s=DEADLINE_S))
            assert time.monotonic() - start < DEADLINE_S + 1
            hop.shutdown()


# --- allow-list entries with ports -------------------------------------------------------------------

@pytest.mark.parametrize("entry, host, port", [
    ("127.0.0.1", "127.0.0.1", None),
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    ("[::1]:8080", "::1", 8080),
    ("[::1]", "::1", None),
    ("::1", "::1", None),  # a bare IPv6 address has no port
    ("Images.Internal:8443", "images.internal", 8443),
    ("10.0.0.0/8:8080", "10.0.0.0/8", 8080),
    ("[fd00::/8]:8443", "fd00::/8", 8443),
    ("localhost.", "localhost", None),
])
def test_allow_list_entries_parse(entry, host, port):
    allow = _allow_entry(entry)
    assert (allow.host, allow.port) == (host, port)


@pytest.mark.parametrize("entry, why", [
    ("127.0.0.1:0", "bad port"), ("127.0.0.1:65536", "bad port"), ("127.0.0.1:http", "bad port"),
    ("127.0.0.1:", "bad port"), ("[::1]:", "bad port"), ("[::1", "not a host name"), ("[::1]8080", "not a host name"),
    ("not a host:80", "not a host name"),
])
def test_bad_allow_list_entries_are_refused_in_one_line(entry, why):
    with pytest.raises(ValueError, match=why):
        _allow_entry(entry)
    with pytest.raises(ValueError, match=f"^{ALLOW_ENV}='.*': .*{why}.*: use comma-separated"):
        FetchPolicy.from_env({ALLOW_ENV: entry})


def test_an_entry_without_a_port_allows_only_the_default_ports():
    import ipaddress

    ip = ipaddress.ip_address("127.0.0.1")
    bare, ported = FetchPolicy(allowed_private=("127.0.0.1",)), FetchPolicy(allowed_private=("127.0.0.0/8:8080",))
    assert bare.allows("127.0.0.1", ip, 80, "http") and bare.allows("127.0.0.1", ip, 443, "https")
    assert not bare.allows("127.0.0.1", ip, 443, "http") and not bare.allows("127.0.0.1", ip, 8080, "http")
    assert ported.allows("127.0.0.1", ip, 8080, "http") and ported.allows("127.0.0.1", ip, 8080, "https")
    assert not ported.allows("127.0.0.1", ip, 80, "http")
    named = FetchPolicy(allowed_private=("images.internal:8443",))
    assert named.allows("images.internal", ip, 8443, "https") and not named.allows("other", ip, 8443, "https")


class _Image(BaseHTTPRequestHandler):
    body = _encoded((40, 30))
    hits = []

    def do_GET(self):
        self.hits.append(self.path)
        if self.path.startswith("/to/"):  # /to/<port>: a redirect to that port on the same host
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.path.split('/')[2]}/png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def two_servers():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Image) for _ in range(2)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    _Image.hits = []
    yield [srv.server_port for srv in servers]
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_host_port_entries_are_enforced(two_servers):
    a, b = two_servers
    policy = FetchPolicy(allowed_private=(f"127.0.0.1:{a}",))
    assert fetch_untrusted_image(f"http://127.0.0.1:{a}/png", policy).size == (40, 30)
    with pytest.raises(FetchError) as err:
        fetch_untrusted_image(f"http://127.0.0.1:{b}/png?token=SECRET", policy)
    assert str(err.value) == (f"refused: 127.0.0.1:{b} is not an allowed port for 127.0.0.1 "
                              f"(add 127.0.0.1:{b} to {ALLOW_ENV})")
    assert err.value.kind == CONTENT and _Image.hits == ["/png"]  # b was never contacted
    with pytest.raises(FetchError, match=rf"not an allowed port for 127\.0\.0\.1 \(add 127\.0\.0\.1:{a} to"):
        fetch_untrusted_image(f"http://127.0.0.1:{a}/png", FetchPolicy(allowed_private=("127.0.0.1",)))
    with pytest.raises(FetchError, match=rf"refused: 127\.0\.0\.1 is a loopback address \(to allow it, add "
                                         rf"127\.0\.0\.1:{a} to {ALLOW_ENV}\)"):
        fetch_untrusted_image(f"http://127.0.0.1:{a}/png", FetchPolicy())


def test_a_redirect_to_a_port_not_allowed_is_refused(two_servers):
    a, b = two_servers
    with pytest.raises(FetchError) as err:
        fetch_untrusted_image(f"http://127.0.0.1:{a}/to/{b}", FetchPolicy(allowed_private=(f"127.0.0.1:{a}",)))
    assert str(err.value) == (f"refused: 127.0.0.1:{b} is not an allowed port for 127.0.0.1 "
                              f"(add 127.0.0.1:{b} to {ALLOW_ENV})")
    assert _Image.hits == [f"/to/{b}"]
    both = FetchPolicy(allowed_private=(f"127.0.0.1:{a}", f"127.0.0.1:{b}"))
    assert fetch_untrusted_image(f"http://127.0.0.1:{a}/to/{b}", both).size == (40, 30)


# --- decode memory ------------------------------------------------------------------------------------

@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoded fails the test (a refusal must come from the header alone)."""
    def refuse(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_a_36_megapixel_png_is_refused_before_decoding(no_decoding):
    data = _encoded((6000, 6000), mode="1", color=1)  # ~16 KB on the wire, ~200 MB decoded as RGB(A)
    assert len(data) < 20_000
    with pytest.raises(FetchError) as err:
        decode_image(data, max_pixels=FetchPolicy().max_pixels)
    assert str(err.value) == "6000x6000 pixels is too large (the limit is 16,777,216 pixels)"
    assert err.value.kind == CONTENT


def test_the_pixel_cap_is_the_policys():
    assert FetchPolicy().max_pixels == 4096 * 4096
    assert FetchPolicy.from_env({"THUMBLAB_FETCH_MAX_PIXELS": "1000000"}).max_pixels == 1_000_000
    with pytest.raises(FetchError, match="too large"):
        decode_image(_encoded((1200, 1000)), max_pixels=1_000_000)
    with pytest.raises(ValueError, match="^THUMBLAB_FETCH_MAX_PIXELS='0': use "):
        FetchPolicy.from_env({"THUMBLAB_FETCH_MAX_PIXELS": "0"})


def test_a_large_jpeg_is_decoded_reduced_by_draft(monkeypatch):
    seen = []
    real = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: seen.append(size) or real(self, mode, size))
    img = decode_image(_encoded((4000, 3000), "JPEG"))
    assert seen == [(DECODE_SIDE, DECODE_SIDE)]
    assert img.mode == "RGB" and img.size == (1000, 750)  # DCT-scaled to 1/4: short side >= 448 >= 224
    # through the untrusted fetcher's cap (12 MP is under it), and a real thumbnail is decoded as it is
    assert decode_image(_encoded((4000, 3000), "JPEG"), max_pixels=FetchPolicy().max_pixels).size == (1000, 750)
    assert decode_image(_encoded((1280, 720), "JPEG")).size == (1280, 720)


def test_a_large_non_jpeg_is_box_reduced_after_decoding():
    img = decode_image(_encoded((3000, 2000)))
    assert img.size == (750, 500) and min(img.size) >= DECODE_SIDE  # 2000 // 448 = 4
    assert decode_image(_encoded((800, 600))).size == (800, 600)


def test_decodes_wait_for_a_slot(monkeypatch):
    monkeypatch.setattr(images, "_decodes", threading.BoundedSemaphore(1))
    inside, release = threading.Event(), threading.Event()
    real_open = Image.open

    def held_open(*args, **kwargs):
        inside.set()
        release.wait(10)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", held_open)
    worker = threading.Thread(target=decode_image, args=(_encoded((40, 30)),))
    worker.start()
    try:
        assert inside.wait(10)
        assert not images._decodes.acquire(blocking=False)  # the one slot is held by the decode in progress
    finally:
        release.set()
        worker.join(10)
    assert images._decodes.acquire(blocking=False)  # and given back when it ends
    assert images.DECODE_SLOTS >= 1
