"""SSRF-safe fetching, against a real HTTP server on loopback (nothing leaves 127.0.0.1)."""

import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from thumblab_dagster.lib.embed.images import CONTENT, DEFAULT_MAX_BYTES, TRANSPORT, FetchError
from thumblab_dagster.lib.embed.untrusted_fetch import ALLOW_ENV, MAX_BYTES_ENV, TIMEOUT_ENV, FetchPolicy, fetch_untrusted_image

LOCAL = FetchPolicy(allowed_private=("127.0.0.1",))  # loopback on the default port only


def local(port: int, **kwargs) -> FetchPolicy:
    """A policy allowing exactly 127.0.0.1:port (an entry without a port allows only 80 and 443)."""
    return FetchPolicy(allowed_private=(f"127.0.0.1:{port}",), **kwargs)


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Host")))
        status, headers, body = self.server.routes.get(self.path.split("?")[0], (404, {}, b"nope"))
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            if value is not None:  # None: leave the header out (body then ends at connection close)
                self.send_header(name, value.format(port=self.server.server_port))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the client hanging up on an over-cap body is expected, not a test failure


@pytest.fixture(scope="module")
def _server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    png = {"Content-Type": "image/png"}
    srv.routes = {
        "/png": (200, png, _png((40, 30))),
        "/html": (200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>hi</html>"),
        "/huge-length": (200, {**png, "Content-Length": "9999999999"}, b"x"),
        "/stream": (200, {**png, "Content-Length": None}, b"\0" * 200_000),
        "/redirect": (302, {"Location": "/png"}, b""),
        "/redirect-abs": (301, {"Location": "http://127.0.0.1:{port}/redirect"}, b""),
        "/redirect-private": (302, {"Location": "http://10.1.2.3/x?token=SECRET"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        # 100M pixels declared, ~12 KB on disk: refused from the header, never decoded
        "/bomb": (200, png, _png((10_000, 10_000), mode="1")),
    }
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(_server):
    _server.seen.clear()
    _server.base = f"http://127.0.0.1:{_server.server_port}"
    return _server


def test_fetches_image_when_loopback_is_allowed(server):
    img = fetch_untrusted_image(server.base + "/png", local(server.server_port))
    assert (img.mode, img.size) == ("RGB", (40, 30))
    assert server.seen == [("/png", f"127.0.0.1:{server.server_port}")]
    cidr = FetchPolicy(allowed_private=(f"127.0.0.0/8:{server.server_port}",))
    assert fetch_untrusted_image(server.base + "/png", cidr).size == (40, 30)


def test_default_policy_refuses_loopback_without_connecting(server):
    with pytest.raises(FetchError, match=r"refused: 127\.0\.0\.1 is a loopback address .*THUMBLAB_FETCH_ALLOW_PRIVATE"):
        fetch_untrusted_image(server.base + "/png")
    assert server.seen == []


@pytest.mark.parametrize("url, kind", [
    ("http://10.1.2.3/x?token=SECRET", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8080/a.png", "loopback"),
    ("http://0.0.0.0/a.png", "unspecified"),
    ("http://[::ffff:169.254.169.254]/a.png", "link-local"),  # IPv4-mapped IPv6 is judged as its IPv4
    ("http://100.64.0.1/a.png", "non-global"),
    ("http://[2002:a9fe:a9fe::1]/a.png", r"link-local \(tunnelled\)"),  # 6to4 around 169.254.169.254
    ("http://[fec0::1]/a.png", "site-local"),
])
def test_refuses_non_global_addresses(url, kind):
    with pytest.raises(FetchError, match=f"is an? {kind} address") as err:
        fetch_untrusted_image(url, LOCAL)
    assert "SECRET" not in str(err.value)  # query strings may carry tokens: never echoed


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "only http"),
    ("ftp://example.com/a.png", "only http"),
    ("data:image/png;base64,AAAA", "only http"),
    ("sample://thumb/1", "only http"),
    ("http:///a.png", "no host"),
    ("http://user:pw@example.com/a.png", "credentials"),
])
def test_refuses_bad_urls(url, reason):
    with pytest.raises(FetchError, match=reason):
        fetch_untrusted_image(url)


def test_connects_to_the_validated_ip_without_resolving_again(server, monkeypatch):
    # DNS rebinding: the first answer passes the check, a second lookup would get something else.
    real, answers = socket.getaddrinfo, iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]])

    def fake(host, *args, **kwargs):
        if host != "thumbs.test":
            return real(host, *args, **kwargs)
        answer = next(answers, None)
        if answer is None:
            raise socket.gaierror("second lookup: rebinding would happen here")
        return answer

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    url = f"http://thumbs.test:{server.server_port}/png"
    assert fetch_untrusted_image(url, FetchPolicy(allowed_private=(f"thumbs.test:{server.server_port}",))).size \
        == (40, 30)
    assert server.seen == [("/png", f"thumbs.test:{server.server_port}")]  # virtual host kept


def test_unreachable_port_and_silent_server_give_clear_errors():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchError, match=f"could not connect to 127.0.0.1:{port}") as err:
        fetch_untrusted_image(f"http://127.0.0.1:{port}/a.png", local(port))
    assert err.value.kind == TRANSPORT
    with socket.socket() as silent:  # accepts the TCP handshake (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        with pytest.raises(FetchError, match="timed out reading from 127.0.0.1") as err:
            fetch_untrusted_image(f"http://127.0.0.1:{port}/a.png", local(port, read_timeout_s=0.05))
    assert err.value.kind == TRANSPORT


@pytest.mark.parametrize("path, limits, reason", [
    ("/missing?token=SECRET", {}, "^HTTP 404$"),
    ("/html", {}, "^content type text/html is not an image$"),
    ("/huge-length", {}, "9,999,999,999 bytes exceeds the 5,242,880-byte cap"),
    ("/stream", {"max_bytes": 50_000}, "body exceeds the 50,000-byte cap"),
    ("/redirect-private", {}, r"refused: 10\.1\.2\.3 is a private address"),
    ("/loop", {}, r"too many redirects \(more than 3\)"),
    ("/redirect", {"max_redirects": 0}, "too many redirects"),
    ("/bomb", {}, "too large|decompression bomb"),
])
def test_refused_responses(server, path, limits, reason):
    with pytest.raises(FetchError, match=reason) as err:
        fetch_untrusted_image(server.base + path, local(server.server_port, **limits))
    assert "SECRET" not in str(err.value) and err.value.kind == CONTENT


def test_follows_redirects_within_the_policy(server):
    assert fetch_untrusted_image(server.base + "/redirect-abs", local(server.server_port)).size == (40, 30)
    assert [path for path, _ in server.seen] == ["/redirect-abs", "/redirect", "/png"]
    server.seen.clear()
    with pytest.raises(FetchError, match="too many"):
        fetch_untrusted_image(server.base + "/loop", local(server.server_port))
    assert len(server.seen) == 4  # the first request plus max_redirects hops, then it stops


def test_policy_from_env():
    assert FetchPolicy.from_env({}) == FetchPolicy()
    policy = FetchPolicy.from_env({ALLOW_ENV: " 127.0.0.1, 10.0.0.0/8 ,localhost,", TIMEOUT_ENV: "2.5", MAX_BYTES_ENV: "1000"})
    assert policy.allowed_private == ("127.0.0.1", "10.0.0.0/8", "localhost")
    assert (policy.read_timeout_s, policy.max_bytes, policy.connect_timeout_s) == (2.5, 1000, 3.0)
    assert FetchPolicy(allowed_private="127.0.0.1").allowed_private == ("127.0.0.1",)  # not split into chars
    assert FetchPolicy().max_bytes == DEFAULT_MAX_BYTES


@pytest.mark.parametrize("var, value", [
    (TIMEOUT_ENV, "soon"), (TIMEOUT_ENV, "-1"), (TIMEOUT_ENV, "nan"), (MAX_BYTES_ENV, "5MB"), (MAX_BYTES_ENV, "0"),
    (ALLOW_ENV, "10.0.0.0/8, not a host"),
])
def test_policy_from_env_rejects_bad_values(var, value):
    with pytest.raises(ValueError, match=f"^{var}='.*: use "):  # one line: the variable, its value, what to use
        FetchPolicy.from_env({var: value})


def test_a_whole_fetch_has_a_time_limit(server):
    # Per-read timeouts alone let a byte-a-second server hold a worker for hours; the limit spans it all.
    policy = local(server.server_port, total_timeout_s=1e-9)
    with pytest.raises(FetchError, match="timed out|took too long") as err:
        fetch_untrusted_image(server.base + "/png", policy)
    assert err.value.kind == TRANSPORT
