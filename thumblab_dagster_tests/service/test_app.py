"""The scoring service through a real uvicorn server on loopback, thumbnails from a loopback server."""

import socket

import pytest
import requests

from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche
from thumblab_dagster_tests.service.server import TOKEN, N, loopback_images, score, serving


def test_health_reports_model_and_loaded_niches(service):
    base, _, _ = service
    health = requests.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"]["loaded"] and health["model"]["name"] == "ViT-B-32"
    assert health["model"]["precision"] == "fp32"  # THUMBLAB_CLIP_PRECISION's default
    assert health["niches"]["tech"]["loaded"] and health["niches"]["tech"]["version"].startswith("2026-11-21+")
    assert health["niches"]["gaming"] == {"exists": False, "loaded": False, "version": None, "num_vectors": 0}


def test_a_good_request_scores_each_thumbnail_and_the_title(service):
    base, images, ids = service
    resp = score(base, {"title": "title of vid005", "category": "tech",
                        "thumbnails": [{"id": "a", "url": f"{images}/thumb.png"},
                                       {"id": "b", "url": f"{images}/thumb.png?v=2"}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["category"] == "tech" and [t["id"] for t in body["thumbnails"]] == ["a", "b"]
    for thumb in body["thumbnails"]:
        assert thumb["ok"] and thumb["error"] is None
        assert 0 <= thumb["similarity"]["percentile"] <= 100 and thumb["similarity"]["source"] == "local"
        assert thumb["similarity"]["is_default"] is False and thumb["similarity"]["k"] == 10
        # the served image is vid003's thumbnail: it is its own closest reference
        assert thumb["similar"][0]["video_id"] == ids[3] and thumb["similar"][0]["similarity"] > 0.999
        assert thumb["similar"][0]["title"] == "title of vid003" and len(thumb["similar"]) == 5
    assert body["title"]["source"] == "local" and 0 <= body["title"]["percentile"] <= 100
    assert "title vectors" in body["title"]["reason"]
    # N references is the minimum (30): confident, and the reason adds nothing
    for answer in [body["title"], *(t["similarity"] for t in body["thumbnails"])]:
        assert (answer["reference_count"], answer["confident"]) == (N, True) and "only" not in answer["reason"]


def test_a_thin_niche_is_flagged_not_confident(service, clip, tmp_path):
    _, images, _ = service
    # a niche with 3 videos over the window: its index holds 3 references (and 3 titles)
    publish_niche(tmp_path / "pub", "gaming", clustered(3, d=clip.dim, centres=3, seed=4), ["g0", "g1", "g2"],
                  snapshot="2026-11-21", titles=clustered(3, d=clip.dim, centres=3, seed=5),
                  embedding=clip.weights.as_dict())
    settings = ServiceSettings(publish_dir=str(tmp_path / "pub"), fetch=loopback_images(images))
    with serving(create_app(settings, clip=clip)) as base:
        body = score(base, {"title": "a new game", "category": "gaming",
                            "thumbnails": [{"id": "a", "url": f"{images}/thumb.png"}]}).json()
        unknown = score(base, {"category": "cooking", "thumbnails": [{"id": "a", "url": f"{images}/thumb.png"}]})
    sim, title = body["thumbnails"][0]["similarity"], body["title"]
    for answer in (sim, title):
        assert (answer["source"], answer["reference_count"], answer["confident"]) == ("local", 3, False)
        assert answer["reason"].endswith("only 3 references (fewer than 30): the percentile is not confident")
    assert sim["is_default"] is False and body["thumbnails"][0]["similar"][0]["video_id"] in {"g0", "g1", "g2"}
    default = unknown.json()["thumbnails"][0]["similarity"]
    assert default["is_default"] and (default["reference_count"], default["confident"]) == (None, False)


def test_the_minimum_comes_from_the_setting(tmp_path):
    assert ServiceSettings.from_env({}, publish_dir=str(tmp_path)).min_references == 30
    lenient = ServiceSettings.from_env({"THUMBLAB_MIN_REFERENCES": "3"}, publish_dir=str(tmp_path))
    assert lenient.min_references == 3
    assert create_app(lenient, clip=object()).state.library.spec.min_references == 3  # the library ranks with it


def test_category_defaults_to_tech_and_an_unknown_niche_falls_back_with_a_reason(service):
    base, images, _ = service
    thumbs = [{"id": "a", "url": f"{images}/thumb.png"}]
    assert score(base, {"thumbnails": thumbs}).json()["category"] == "tech"
    body = score(base, {"category": "cooking", "thumbnails": thumbs}).json()
    sim = body["thumbnails"][0]["similarity"]
    assert sim["percentile"] == 50.0 and sim["is_default"] and "unknown niche 'cooking'" in sim["reason"]


@pytest.mark.parametrize("body", [
    {},
    {"thumbnails": "http://x/y.png"},
    {"thumbnails": [{"url": "http://x/y.png"}]},
    {"thumbnails": []},
    {"thumbnails": [{"id": str(i), "url": "http://x/y.png"} for i in range(11)]},
    {"category": "../../etc", "thumbnails": [{"id": "a", "url": "http://x/y.png"}]},
    {"category": "x" * 65, "thumbnails": [{"id": "a", "url": "http://x/y.png"}]},
])
def test_a_malformed_body_is_a_422(service, body):
    resp = score(service[0], body)
    assert resp.status_code == 422 and resp.json()["detail"]


def test_bad_thumbnail_urls_are_per_thumbnail_errors_never_a_500(service):
    base, images, _ = service
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    urls = {"unreachable": f"http://127.0.0.1:{dead_port}/thumb.png",
            "private": "http://10.0.0.7/thumb.png",
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "not-an-image": f"{images}/page.html",
            "file": "file:///etc/passwd",
            "good": f"{images}/thumb.png"}
    resp = score(base, {"thumbnails": [{"id": k, "url": u} for k, u in urls.items()]})
    assert resp.status_code == 200
    got = {t["id"]: t for t in resp.json()["thumbnails"]}
    # only the image server's port is allowed: refused before connecting (an allowed dead port: test_fetch_bounds)
    assert f"refused: 127.0.0.1:{dead_port} is not an allowed port" in got["unreachable"]["error"]
    assert "10.0.0.7 is a private address" in got["private"]["error"]
    assert "169.254.169.254 is a link-local address" in got["metadata"]["error"]
    assert "content type text/html is not an image" in got["not-an-image"]["error"]
    assert "only http(s) URLs" in got["file"]["error"]
    assert all(not t["ok"] and t["similarity"] is None for k, t in got.items() if k != "good")
    assert got["good"]["ok"]


def test_index_stats_needs_the_bearer_token(service):
    base, _, _ = service
    url = f"{base}/internal/index-stats"
    assert requests.get(url, timeout=10).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    ok = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200
    body = ok.json()
    assert body["indices"]["tech"]["num_vectors"] == N and body["indices"]["tech"]["dimension"] == 512
    assert body["cache"]["cached_niches"] == ["tech"] and body["cache"]["loads"] == 1


def test_index_stats_is_disabled_without_a_token(tmp_path, clip):
    settings = ServiceSettings(publish_dir=str(tmp_path))
    with serving(create_app(settings, clip=clip)) as base:
        resp = requests.get(f"{base}/internal/index-stats", headers={"Authorization": "Bearer x"}, timeout=10)
    assert resp.status_code == 404 and "THUMBLAB_INTERNAL_TOKEN" in resp.json()["detail"]


def test_the_openapi_schema_describes_what_the_endpoints_return(service):
    base, images, _ = service
    schema = requests.get(f"{base}/openapi.json", timeout=10).json()
    paths = schema["paths"]
    assert set(paths) == {"/health", "/v1/score", "/internal/index-stats", "/internal/refresh-library",
                          "/internal/rebuild-indices", "/internal/runs/{run_id}", "/metrics",
                          "/api/faiss/search", "/api/faiss/viewports", "/api/faiss/build-index", "/api/faiss/statistics",
                          "/api/faiss/similar-tracks", "/api/faiss/generate-playlist", "/api/faiss/extract-vector"}
    post = paths["/v1/score"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreRequest")
    assert {"200", "422"} <= set(post["responses"])
    assert paths["/internal/index-stats"]["get"]["security"] == [{"HTTPBearer": []}]
    assert {"401", "404"} <= set(paths["/internal/index-stats"]["get"]["responses"])
    components = schema["components"]["schemas"]
    body = score(base, {"title": "t", "thumbnails": [{"id": "a", "url": f"{images}/thumb.png"}]}).json()
    assert set(body) == set(components["ScoreResponse"]["properties"])
    assert set(body["thumbnails"][0]) == set(components["ThumbnailScore"]["properties"])
    assert set(body["thumbnails"][0]["similarity"]) == set(components["Percentile"]["properties"])
    assert set(body["thumbnails"][0]["similar"][0]) == set(components["SimilarReference"]["properties"])
    assert set(components["ScoreRequest"]["required"]) == {"thumbnails"}
