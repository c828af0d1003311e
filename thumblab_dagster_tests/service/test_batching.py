"""Cross-request micro-batching through a real uvicorn: concurrent /v1/score requests share one CLIP forward
per tower and get exactly the answers they get one at a time."""

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

import numpy as np
import pytest

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.untrusted_fetch import FetchPolicy
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche
from thumblab_dagster_tests.service.server import ImageHandler, score, serving

K = 4  # concurrent requests, each with one thumbnail and a title
N = 40


def png(picture) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def uploads(service):
    """K distinct pictures on the package's image server, and a request body for each."""
    _, images, _ = service
    bodies = []
    for i in range(K):
        ImageHandler.pictures[f"/upload/{i}.png"] = png(render_thumbnail("tech", f"upload{i}"))
        bodies.append({"title": f"my upload number {i}", "category": "tech",
                       "thumbnails": [{"id": f"u{i}", "url": f"{images}/upload/{i}.png"}]})
    return bodies


def settings_for(root, images: str, **batching) -> ServiceSettings:
    return ServiceSettings(publish_dir=str(root), fetch=FetchPolicy(allowed_private=(urlsplit(images).netloc,)),
                           **batching)


def leaves(body, path="") -> dict:
    """Every value of a JSON answer by its path."""
    if isinstance(body, dict):
        return {k: v for key, value in body.items() for k, v in leaves(value, f"{path}/{key}").items()}
    if isinstance(body, list):
        return {k: v for i, value in enumerate(body) for k, v in leaves(value, f"{path}/{i}").items()}
    return {path: body}


def assert_same_answer(together: dict, alone: dict) -> None:
    """Equal, floats within 1e-5: batched and unbatched rows differ only in float rounding (~1e-7)."""
    together, alone = leaves(together), leaves(alone)
    assert together.keys() == alone.keys()
    for path, value in alone.items():
        assert together[path] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), path


def test_concurrent_requests_share_forwards_and_get_the_sequential_answers(service, clip, uploads, tmp_path):
    _, images, _ = service
    root = tmp_path / "pub"
    publish_niche(root, "tech", clustered(N, d=clip.dim, seed=3), [f"ref{i:03d}" for i in range(N)],
                  snapshot="2026-12-01", titles=clustered(N, d=clip.dim, seed=4), embedding=clip.weights.as_dict())

    with serving(create_app(settings_for(root, images), clip=clip)) as base:
        sequential = [score(base, body) for body in uploads]

    # An image (or title) batch runs only once all K requests' items wait: one forward per tower, for sure.
    batched = create_app(settings_for(root, images, batch_window_ms=30_000, batch_max=K), clip=clip)
    with serving(batched) as base, ThreadPoolExecutor(K) as pool:
        concurrent = list(pool.map(lambda body: score(base, body), uploads))
        stats = batched.state.batchers.stats()

    assert [r.status_code for r in sequential + concurrent] == [200] * (2 * K), [r.text for r in concurrent]
    for alone, together in zip(sequential, concurrent):
        alone, together = alone.json(), together.json()
        assert alone["thumbnails"][0]["ok"] and alone["title"]["source"] == "local"
        assert together["thumbnails"][0]["similarity"]["percentile"] == alone["thumbnails"][0]["similarity"]["percentile"]
        assert together["title"]["percentile"] == alone["title"]["percentile"]
        assert [s["video_id"] for s in together["thumbnails"][0]["similar"]] == \
            [s["video_id"] for s in alone["thumbnails"][0]["similar"]]
        assert_same_answer(together, alone)
    assert stats["image"]["batches"] == 1 and stats["image"]["largest"] == K
    assert stats["text"]["batches"] == 1 and stats["text"]["largest"] == K


def test_the_scorer_embeds_alike_with_and_without_batchers(clip, tmp_path):
    from thumblab_dagster.lib.collections.thumbnails.scoring import UploadScorer, thumbnail_library
    from thumblab_dagster.lib.embed.batching import ClipBatchers

    library = thumbnail_library(tmp_path)  # nothing published: only the embedding is compared here
    picture = render_thumbnail("gaming", "scorer")
    direct = UploadScorer(library, clip)
    with ClipBatchers(clip, window_s=0) as batchers:
        batched = UploadScorer(library, clip, batchers=batchers)
        assert np.allclose(batched.title_vector("a title"), direct.title_vector("a title"), atol=1e-5)
        assert np.allclose(batched.title_vector_soon("a title").result(60), direct.title_vector_soon("a title").result(),
                           atol=1e-5)
        assert np.allclose(batched.batchers.embed_image(picture), direct.image_vector(picture, "tech"), atol=1e-5)
        with pytest.raises(ValueError, match="own CLIP model"):
            UploadScorer(library, replace(clip, lock=threading.Lock()), batchers=batchers)
