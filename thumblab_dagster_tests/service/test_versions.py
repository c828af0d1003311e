"""One version per answer: concurrent /v1/score requests while the niche is republished, through a real uvicorn."""

import threading

import requests

from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche
from thumblab_dagster_tests.service.server import loopback_images, score, serving

PUBLISHES = 6
THREADS, REQUESTS_EACH = 4, 5


def size_of(j: int) -> int:
    return 30 if j % 2 == 0 else 24  # alternating sizes: a count from another version shows


def publish(root, clip, j: int) -> None:
    n = size_of(j)
    publish_niche(root, "tech", clustered(n, d=clip.dim, seed=j), [f"p{j}-{i:03d}" for i in range(n)],
                  snapshot=f"2026-12-0{j}", titles=clustered(n, d=clip.dim, seed=100 + j),
                  embedding=clip.weights.as_dict())


def publish_of(version: str) -> int:
    return int(version.split("+")[0].removeprefix("2026-12-0"))  # the snapshot names the publish


def test_concurrent_requests_during_publishes_each_name_one_version(service, clip, tmp_path):
    _, images, _ = service
    root = tmp_path / "pub"
    publish(root, clip, 0)
    answered = threading.Semaphore(0)  # the publisher waits for a response between publishes: they interleave
    bodies, healths, failures = [], [], []

    def client(t: int) -> None:
        try:
            for r in range(REQUESTS_EACH):
                resp = score(base, {"title": f"title {t}-{r}", "category": "tech",
                                    "thumbnails": [{"id": "a", "url": f"{images}/thumb.png?r={t}-{r}"}]})
                assert resp.status_code == 200, resp.text
                bodies.append(resp.json())
                healths.append(requests.get(f"{base}/health", timeout=30).json()["niches"]["tech"])
                answered.release()
        except Exception as exc:  # reported below, from the test's own thread
            failures.append(exc)

    with serving(create_app(ServiceSettings(publish_dir=str(root), fetch=loopback_images(images)), clip=clip)) as base:
        clients = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
        for thread in clients:
            thread.start()
        try:
            for j in range(1, PUBLISHES + 1):
                publish(root, clip, j)
                answered.acquire(timeout=120)
        finally:
            for thread in clients:
                thread.join()
    assert failures == []
    assert len(bodies) == THREADS * REQUESTS_EACH
    for body in bodies:
        thumb, title, version = body["thumbnails"][0], body["title"], body["version"]
        j = publish_of(version)
        assert thumb["ok"] and thumb["similarity"]["version"] == title["version"] == version
        assert thumb["similarity"]["reference_count"] == title["reference_count"] == size_of(j)
        assert {s["video_id"].split("-")[0] for s in thumb["similar"]} == {f"p{j}"}
    for health in healths:
        assert health["loaded"] and health["num_vectors"] == size_of(publish_of(health["version"]))
    assert len({body["version"] for body in bodies}) >= 2  # the requests really saw versions change

