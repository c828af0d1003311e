"""Content failures (the URL's answer is no image) versus transport failures (the network or the server
failed), against the loopback thumbnail server: only transport failures are retried."""

import socket
import time

import pytest

from thumblab_dagster.lib.embed.images import CONTENT, TRANSPORT, fetch_images
from thumblab_dagster_tests.fakes.youtube import CUT, DROP, jpeg


def fetch_one(youtube, name, **kwargs):
    [result] = fetch_images([f"{youtube.thumb_base}/{name}"], max_workers=1, backoff_factor=0.0, **kwargs)
    return result


@pytest.mark.parametrize(("status", "ctype", "body", "label"), [
    (404, "text/plain", b"gone", "HTTP 404"),
    (410, "text/plain", b"gone", "HTTP 410"),
    (403, "text/plain", b"no", "HTTP 403"),
    (200, "text/html", b"<html>consent page</html>", "content type text/html is not an image"),
    (200, "image/jpeg", b"\x00not a jpeg" * 10, "not a readable image (UnidentifiedImageError)"),
])
def test_content_failures_are_final_at_once(youtube, status, ctype, body, label):
    youtube.thumbs["bad.jpg"] = (status, ctype, body)
    result = fetch_one(youtube, "bad.jpg", retries=3)
    assert (result.ok, result.kind, result.label) == (False, CONTENT, label)
    assert result.attempts == 1 and youtube.thumb_requests("bad.jpg") == 1


@pytest.mark.parametrize(("fault", "label", "reason"), [
    (DROP, "ConnectionError", "ConnectionError: the server closed the connection without a response"),
    (503, "HTTP 503", "HTTP 503"),
    (500, "HTTP 500", "HTTP 500"),
    (429, "HTTP 429", "HTTP 429"),
])
def test_transport_failures_are_retried_then_reported(youtube, fault, label, reason):
    youtube.thumbs["flaky.jpg"] = (200, "image/jpeg", jpeg(1))
    youtube.thumb_faults["flaky.jpg"] = [fault] * 10
    result = fetch_one(youtube, "flaky.jpg", retries=2)
    assert (result.ok, result.kind, result.label, result.error) == (False, TRANSPORT, label, reason)
    assert result.attempts == 3 and youtube.thumb_requests("flaky.jpg") == 3


def test_a_transport_failure_that_passes_is_no_failure(youtube):
    youtube.thumbs["flaky.jpg"] = (200, "image/jpeg", jpeg(1))
    youtube.thumb_faults["flaky.jpg"] = [DROP, 503]
    result = fetch_one(youtube, "flaky.jpg", retries=2)
    assert result.ok and result.attempts == 3 and result.kind is None


def test_a_body_cut_off_mid_way_is_transport_and_retried(youtube):
    youtube.thumbs["cut.jpg"] = (200, "image/jpeg", CUT)
    result = fetch_one(youtube, "cut.jpg", retries=1)
    assert (result.kind, result.label) == (TRANSPORT, "ChunkedEncodingError")
    assert result.error == "ChunkedEncodingError: the connection broke mid-response"
    assert youtube.thumb_requests("cut.jpg") == 2


def test_a_refused_connection_is_transport():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [result] = fetch_images([f"http://127.0.0.1:{port}/x.jpg"], retries=1, backoff_factor=0.0)
    assert (result.kind, result.error, result.attempts) == (TRANSPORT, "ConnectionError: connection refused", 2)


def test_the_server_dropping_after_n_thumbnails(youtube):
    names = [f"t{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        youtube.thumbs[name] = (200, "image/jpeg", jpeg(i))
    youtube.drop_thumbs_after = 2
    results = fetch_images([f"{youtube.thumb_base}/{n}" for n in names], max_workers=2, retries=1,
                           backoff_factor=0.0)
    assert sum(r.ok for r in results) == 2
    assert {r.kind for r in results if not r.ok} == {TRANSPORT}
    assert len([r for r in youtube.requests if r["path"].startswith("/thumbs/")]) == 2 + 4 * 2

    youtube.drop_thumbs_after = None  # recovered
    assert all(r.ok for r in fetch_images([f"{youtube.thumb_base}/{n}" for n in names], backoff_factor=0.0))


def test_retries_back_off_exponentially(youtube):
    youtube.thumb_faults["slow.jpg"] = [503] * 10
    start = time.perf_counter()
    [result] = fetch_images([f"{youtube.thumb_base}/slow.jpg"], retries=2, backoff_factor=0.05)
    assert result.kind == TRANSPORT and result.attempts == 3
    assert time.perf_counter() - start >= 0.05 + 0.1
