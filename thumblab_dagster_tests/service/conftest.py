"""The service tests' shared fixtures: random-weight CLIP, and one published niche served once for the package."""

import http.server
import io
import threading

import numpy as np
import pytest

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.clip import embed_images, embed_texts, load_clip
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster_tests.fakes.libraries import publish_niche
from thumblab_dagster_tests.service.server import TOKEN, ImageHandler, N, loopback_images, serving


@pytest.fixture(scope="package")
def clip():
    return load_clip("ViT-B-32", "none", "cpu")


@pytest.fixture(scope="package")
def service(tmp_path_factory, clip):
    """A published tech niche of real CLIP embeddings, the service over it, and an image server."""
    root = tmp_path_factory.mktemp("service")
    ids = [f"vid{i:03d}" for i in range(N)]
    images = [render_thumbnail("tech", vid) for vid in ids]
    titles = embed_texts(clip, [f"title of {vid}" for vid in ids])
    publish_niche(root / "pub", "tech", embed_images(clip, images), ids, snapshot="2026-11-21",
                  titles=titles, embedding=clip.weights.as_dict(),
                  views_per_hour=np.linspace(10, 1000, N))
    buf = io.BytesIO()
    images[3].save(buf, format="PNG")
    ImageHandler.png = buf.getvalue()
    images_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    threading.Thread(target=images_server.serve_forever, daemon=True).start()
    images = f"http://127.0.0.1:{images_server.server_address[1]}"
    settings = ServiceSettings(publish_dir=str(root / "pub"), internal_token=TOKEN, fetch=loopback_images(images))
    with serving(create_app(settings, clip=clip)) as base:
        yield base, images, ids
    images_server.shutdown()
