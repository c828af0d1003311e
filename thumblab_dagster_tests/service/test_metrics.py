"""``GET /metrics`` through a real uvicorn server: Prometheus text that ``prometheus_client``'s parser reads,
counting what a request did (its route and status, the searches, the cache, a failed thumbnail, the CLIP
batches), with no secret, host or caller input in it."""

import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from thumblab_dagster.lib.embed.images import TRANSPORT, FetchError
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster.service.metrics import MAX_REASONS, Metrics, fetch_reason
from thumblab_dagster_tests.service.server import TOKEN, score, serving

RUN_ID = "00000000-0000-4000-8000-000000000000"


def scrape(base: str) -> dict:
    """Every sample: ``(name, frozenset(labels))`` -> value."""
    resp = requests.get(f"{base}/metrics", timeout=30)  # no token: scrapers send none
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert TOKEN not in resp.text and "127.0.0.1" not in resp.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(samples: dict, metric: str, **labels) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def grew(before: dict, after: dict, metric: str, **labels) -> float:
    return value(after, metric, **labels) - value(before, metric, **labels)


def test_a_score_is_counted_with_its_route_status_searches_cache_and_failed_thumbnail(service):
    base, images, _ = service
    before = scrape(base)
    resp = score(base, {"title": "title of vid005", "category": "tech",
                        "thumbnails": [{"id": "ok", "url": f"{images}/thumb.png"},
                                       {"id": "html", "url": f"{images}/page.html"}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [t["ok"] for t in body["thumbnails"]] == [True, False]
    after = scrape(base)

    request = {"method": "POST", "route": "/v1/score", "status": "200"}
    assert grew(before, after, "thumblab_http_requests_total", **request) == 1
    assert grew(before, after, "thumblab_http_request_duration_seconds_count", **request) == 1
    assert grew(before, after, "thumblab_http_request_duration_seconds_sum", **request) > 0
    # one thumbnail and the title ranked, one thumbnail's neighbours listed, all from the local index
    assert grew(before, after, "thumblab_search_duration_seconds_count", operation="similarity_percentile") >= 1
    assert grew(before, after, "thumblab_search_duration_seconds_count", operation="similar") == 1
    assert grew(before, after, "thumblab_search_duration_seconds_count", operation="side_percentile") == 1
    # the request pinned the loaded version: a cache hit, and the version it answered from is the one serving
    assert grew(before, after, "thumblab_index_cache_hits_total") >= 1
    assert value(after, "thumblab_index_cache_loads_total") >= 1 and value(after, "thumblab_index_loaded") >= 1
    assert value(after, "thumblab_index_serving_info", name="tech", version=body["version"]) == 1
    for counter in ("misses", "refused"):
        assert ("thumblab_index_cache_" + counter + "_total", frozenset()) in after
    # the page that is not an image: a content failure, its media type masked
    assert grew(before, after, "thumblab_fetch_failures_total", kind="content",
                reason="content type _ is not an image") == 1
    # the image and the title each went through a CLIP forward (batched with whatever else arrived)
    for tower in ("image", "text"):
        assert grew(before, after, "thumblab_clip_batch_size_count", tower=tower) >= 1


def test_routes_are_templates_and_answers_before_routing_count_too(service):
    base, _, _ = service
    before = scrape(base)
    assert requests.get(f"{base}/internal/runs/{RUN_ID}", timeout=30).status_code == 401
    assert requests.get(f"{base}/no/such/page-42", timeout=30).status_code == 404
    big = requests.post(f"{base}/v1/score", data=b"x" * 1_000_000, timeout=30,
                        headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    after = scrape(base)
    assert grew(before, after, "thumblab_http_requests_total", method="GET", route="/internal/runs/{run_id}",
                status="401") == 1
    assert grew(before, after, "thumblab_http_requests_total", method="GET", route="unmatched", status="404") == 1
    # the body guard answers before the router: the request still counts under its route
    assert grew(before, after, "thumblab_http_requests_total", method="POST", route="/v1/score", status="413") == 1
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any(RUN_ID in str(r) or "page-42" in str(r) for r in routes)


def test_each_app_has_its_own_registry(clip, tmp_path):
    settings = ServiceSettings(publish_dir=str(tmp_path))
    with serving(create_app(settings, clip=clip)) as one, serving(create_app(settings, clip=clip)) as two:
        for _ in range(3):
            assert requests.get(f"{one}/health", timeout=30).status_code == 200
        assert requests.get(f"{two}/health", timeout=30).status_code == 200
        health = {"method": "GET", "route": "/health", "status": "200"}
        assert value(scrape(one), "thumblab_http_requests_total", **health) == 3
        assert value(scrape(two), "thumblab_http_requests_total", **health) == 1


@pytest.mark.parametrize(("label", "reason"), [
    ("refused: 10.0.0.5 is a private address (to allow it, add 10.0.0.5:80 to THUMBLAB_FETCH_ALLOW_PRIVATE)",
     "refused: _ is a private address"),
    ("content type text/html is not an image", "content type _ is not an image"),
    ("could not connect", "could not connect"),
    ("HTTP 404", "HTTP 404"),
    ("user@evil.example:8080/x?token=abc", "_"),
    ("", "other"),
])
def test_fetch_reasons_name_the_failure_not_the_host(label, reason):
    assert fetch_reason(label) == reason


def test_fetch_reasons_are_capped_and_batches_counted_by_tower():
    metrics = Metrics()
    for i in range(MAX_REASONS + 10):
        metrics.fetch_failed(FetchError(f"reason number{chr(97 + i % 26)}{i // 26}", TRANSPORT,
                                        label=f"reason number{chr(97 + i % 26)}{i // 26}"))
    metrics.observe_batch("image", 3)
    metrics.observe_batch("image", 20)
    metrics.observe_batch("text", 1)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    reasons = [s for s in families["thumblab_fetch_failures"].samples if s.name.endswith("_total")]
    assert len(reasons) == MAX_REASONS + 1 and sum(s.value for s in reasons) == MAX_REASONS + 10
    assert {s.labels["kind"] for s in reasons} == {"transport"}
    assert [s.value for s in reasons if s.labels["reason"] == "other"] == [10]
    batches = {(s.name, s.labels.get("tower"), s.labels.get("le")): s.value for s in families["thumblab_clip_batch_size"].samples}
    assert batches[("thumblab_clip_batch_size_count", "image", None)] == 2
    assert batches[("thumblab_clip_batch_size_sum", "image", None)] == 23
    assert batches[("thumblab_clip_batch_size_bucket", "image", "4.0")] == 1
    assert batches[("thumblab_clip_batch_size_count", "text", None)] == 1
