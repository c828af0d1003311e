"""Published niche libraries built with the real engine, for query-side tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.thumbnails.pipeline import PERCENTILE_K, niche_index_spec
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine.build import build_index_dir

RANDOM_CLIP = {"model": "ViT-B-32", "pretrained": "none", "loaded": False, "source": "random-init"}


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def clustered(n: int = 600, d: int = 64, centres: int = 20, seed: int = 0) -> np.ndarray:
    """Rows around a few centres with varied spread, so leave-one-out scores cover a range."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, d))
    spread = rng.uniform(0.3, 1.5, size=(n, 1))
    return unit(middle[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, d)) / np.sqrt(d) * 4)


def publish_niche(publish_root: Path, niche: str, vectors: np.ndarray, ids: list[str], *, snapshot: str,
                  views_per_hour=None, titles: np.ndarray | None = None, embedding: dict | None = None,
                  factory: str | None = None) -> dict:
    """Build as the pipeline does (reference + weighted reference + title side index) and publish one
    niche; its manifest."""
    n = len(ids)
    metadata = pd.DataFrame({
        "video_id": ids, "title": [f"title of {i}" for i in ids],
        "thumbnail_url": [f"https://i.ytimg.com/vi/{i}/hqdefault.jpg" for i in ids],
        "views_per_hour": np.asarray(views_per_hour if views_per_hour is not None else np.full(n, 100.0), float),
    })
    build_dir = publish_root.parent / "builds" / f"{niche}-{snapshot}"
    spec = niche_index_spec(metadata, titles, factory=factory, embedding=embedding or RANDOM_CLIP,
                            extra={"niche": niche, "snapshot": snapshot})
    manifest = build_index_dir(build_dir, vectors, ids, spec)
    assert publishing.publish(build_dir, publish_root, niche, snapshot).published
    return manifest


def leave_one_out_scores(vectors: np.ndarray, k: int = PERCENTILE_K, weights: np.ndarray | None = None) -> np.ndarray:
    """Brute force: each row's mean (or weighted mean) similarity to its top-k other rows."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, 1)
    if weights is None:
        return top_sims.mean(axis=1)
    w = weights[top]
    return (top_sims * w).sum(axis=1) / w.sum(axis=1)
