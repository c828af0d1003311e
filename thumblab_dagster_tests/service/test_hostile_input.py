"""Hostile bodies through the real uvicorn server: a 422 or a 413 that names the field, never the
input, never a 500 or a reset connection; and ``/docs`` served without a CDN."""

import re

import pytest
import requests

from thumblab_dagster.service.app import ServiceSettings

MARKER = "secret-marker-7f3a"
THUMBS = '[{"id": "a", "url": "http://x/y.png"}]'


def post_raw(base, body: bytes, **kwargs):
    return requests.post(f"{base}/v1/score", data=body, headers={"Content-Type": "application/json"},
                         timeout=60, **kwargs)


def assert_not_echoed(resp):
    assert MARKER not in resp.text and "Traceback" not in resp.text and '"input"' not in resp.text
    assert "\\ud800" not in resp.text.lower() and len(resp.content) < 2000


def fields(resp) -> list[str]:
    return [error["field"] for error in resp.json()["detail"]]


@pytest.mark.parametrize("body, field", [
    (f'{{"title": "\\ud800 {MARKER}", "thumbnails": {THUMBS}}}', "title"),
    (f'{{"thumbnails": [{{"id": "\\ud800{MARKER}", "url": "http://x/y.png"}}]}}', "thumbnails.0.id"),
    (f'{{"thumbnails": [{{"id": "a", "url": "http://x/\\udfff{MARKER}"}}]}}', "thumbnails.0.url"),
    (f'{{"category": "\\ud800", "thumbnails": {THUMBS}}}', "category"),
])
def test_a_lone_surrogate_is_a_422_naming_the_field(service, body, field):
    resp = post_raw(service[0], body.encode())  # the raw JSON escape: json.loads makes a lone surrogate of it
    assert resp.status_code == 422, resp.text
    assert field in fields(resp)
    assert_not_echoed(resp)


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\xed\xa0\x80", b"\xc3"])  # invalid, an encoded surrogate, truncated
def test_a_body_that_is_not_utf8_is_a_422(service, raw):
    resp = post_raw(service[0], b'{"title": "' + raw + MARKER.encode() + b'", "thumbnails": ' + THUMBS.encode() + b"}")
    assert resp.status_code == 422 and "not valid UTF-8" in resp.json()["detail"][0]["msg"]
    assert_not_echoed(resp)


def test_a_10mb_title_is_refused_without_being_echoed(service):
    resp = post_raw(service[0], f'{{"title": "{MARKER * 600_000}", "thumbnails": {THUMBS}}}'.encode())
    assert resp.status_code in (413, 422)
    assert_not_echoed(resp)


def test_a_1mb_body_is_a_413_whether_its_length_is_declared_or_not(service):
    body = f'{{"title": "t", "thumbnails": {THUMBS}, "pad": "{"x" * 1_000_000}"}}'.encode()
    declared = post_raw(service[0], body)
    assert declared.status_code == 413 and "THUMBLAB_MAX_BODY_BYTES" in declared.json()["detail"]
    # chunked (no Content-Length): counted while it is read
    chunked = post_raw(service[0], (body[i:i + 8192] for i in range(0, len(body), 8192)))
    assert chunked.status_code == 413
    # a body under the cap still gets through, chunked or not
    small = f'{{"thumbnails": {THUMBS}, "category": "x/y"}}'.encode()
    assert post_raw(service[0], iter([small[:10], small[10:]])).status_code == 422


def test_a_title_over_300_characters_is_a_422_naming_title(service):
    base, images, _ = service
    thumbs = [{"id": "a", "url": f"{images}/thumb.png"}]
    resp = requests.post(f"{base}/v1/score", json={"title": "t" * 301, "thumbnails": thumbs}, timeout=60)
    assert resp.status_code == 422 and fields(resp) == ["title"]
    assert "at most 300 characters" in resp.json()["detail"][0]["msg"]
    assert "t" * 301 not in resp.text
    assert requests.post(f"{base}/v1/score", json={"title": "t" * 300, "thumbnails": thumbs},
                         timeout=60).status_code == 200


def test_a_422_lists_paths_and_messages_only(service):
    resp = requests.post(f"{service[0]}/v1/score", json={"title": 5, "thumbnails": [{"url": MARKER}], "x": MARKER},
                         timeout=60)
    assert resp.status_code == 422
    for error in resp.json()["detail"]:
        assert set(error) == {"loc", "field", "msg", "type"} and error["loc"][0] == "body"
    assert set(fields(resp)) == {"title", "thumbnails.0.id"}
    assert_not_echoed(resp)
    broken = post_raw(service[0], b'{"title": ')
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"


def test_the_body_cap_comes_from_the_setting(tmp_path):
    assert ServiceSettings.from_env({}, publish_dir=str(tmp_path)).max_body_bytes == 65536
    assert ServiceSettings.from_env({"THUMBLAB_MAX_BODY_BYTES": "1024"}, publish_dir=str(tmp_path)).max_body_bytes == 1024


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_nothing_from_another_host(service, page):
    base = service[0]
    resp = requests.get(f"{base}{page}", timeout=10)
    assert resp.status_code == 200
    external = [u for u in re.findall(r"https?://[^\s\"'<>)]+", resp.text) if not u.startswith(base)]
    assert external == []
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", resp.text)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset  # served by the service itself
        got = requests.get(f"{base}{asset}", timeout=10)
        assert got.status_code == 200 and len(got.content) > 1000, asset


def test_the_openapi_schema_shows_real_examples(service):
    resp = requests.get(f"{service[0]}/openapi.json", timeout=10)
    assert "https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg" in resp.text
    request = resp.json()["components"]["schemas"]["ScoreRequest"]
    example = request["examples"][0]
    assert example["category"] == "tech" and example["title"] and example["thumbnails"][0]["url"].startswith("https://")
    error = resp.json()["paths"]["/v1/score"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/ValidationErrors")
