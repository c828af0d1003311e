"""Resources: where files live, where trending videos come from, how thumbnails are embedded.

``resources_from_env`` picks them from the environment (see the README's table); tests build
them directly with a temp data root.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from thumblab_dagster.lib import embedding
from thumblab_dagster.lib.layout import DEFAULT_DATA_ROOT, DataLayout
from thumblab_dagster.lib.thumbnail_pipeline import FetchSettings, IndexSettings, SourceSettings
from thumblab_dagster.lib.youtube import DEFAULT_BASE_URL


class StorageResource(dg.ConfigurableResource):
    """The data root (parquet, index directories, stats) and the published-index directory."""

    data_root: str = Field(default=DEFAULT_DATA_ROOT, description="Root of every file the pipeline writes.")
    publish_dir: str | None = Field(default=None, description="Where the scoring service loads "
                                    "<niche>.index + <niche>_ids.npy; default <data_root>/faiss_indices.")

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_root, self.publish_dir)


class TrendingSourceResource(dg.ConfigurableResource):
    """YouTube's mostPopular chart when an API key is set, the bundled sample otherwise."""

    api_key: str | None = Field(default=None, description="YouTube Data API v3 key (secret).")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base URL (tests, proxies).")
    region_code: str = Field(default="US", min_length=2, max_length=2)
    max_results: int = Field(default=30, ge=1, le=500)
    timeout_s: float = Field(default=15.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_factor: float = Field(default=1.0, ge=0)

    @property
    def settings(self) -> SourceSettings:
        return SourceSettings(api_key=self.api_key, base_url=self.base_url, region_code=self.region_code.upper(),
                              max_results=self.max_results, timeout_s=self.timeout_s, retries=self.retries,
                              backoff_factor=self.backoff_factor)


class ClipEmbedderResource(dg.ConfigurableResource):
    """open_clip model, weights (a pretrained tag, a checkpoint path, or "none"), device, batch."""

    model: str = Field(default=embedding.DEFAULT_MODEL)
    pretrained: str = Field(default=embedding.DEFAULT_PRETRAINED,
                            description='open_clip pretrained tag, a local checkpoint path, or "none".')
    device: str = Field(default="auto", description='"auto", "cpu", "cuda", "cuda:1", ...')
    batch_size: int = Field(default=32, ge=1)

    def load(self) -> embedding.LoadedClip:
        return embedding.load_clip(self.model, self.pretrained, self.device)


class ThumbnailFetchResource(dg.ConfigurableResource):
    """Bounds on fetching thumbnails: threads, per-request timeout, size cap."""

    max_workers: int = Field(default=8, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0)
    max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)

    @property
    def settings(self) -> FetchSettings:
        return FetchSettings(self.max_workers, self.timeout_s, self.max_bytes)


class IndexEngineResource(dg.ConfigurableResource):
    """How indices are chosen and tuned: a memory budget and the recall@10 they must prove."""

    memory_budget_mb: int = Field(default=2048, ge=1, description="Memory an index may take; "
                                  "choose_index picks Flat / HNSW / IVF / IVF-PQ to fit it.")
    target_recall: float = Field(default=0.95, gt=0, le=1, description="recall@10 that tuning must reach "
                                 "on held-out queries (approximate indices only).")

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings(memory_budget_bytes=self.memory_budget_mb * 1024 * 1024, target_recall=self.target_recall)


def _int_env(env, name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number: set it to e.g. {default} or unset it") from None


def resources_from_env(environ: dict | None = None) -> dict:
    env = os.environ if environ is None else environ
    source_kwargs = {
        "base_url": env.get("YOUTUBE_API_BASE_URL") or DEFAULT_BASE_URL,
        "region_code": env.get("YOUTUBE_REGION_CODE") or "US",
        "max_results": _int_env(env, "YOUTUBE_MAX_RESULTS", 30),
    }
    if env.get("YOUTUBE_API_KEY"):
        # EnvVar: the UI shows the variable's name, never its value.
        source_kwargs["api_key"] = dg.EnvVar("YOUTUBE_API_KEY")
    return {
        "storage": StorageResource(data_root=env.get("THUMBLAB_DATA_ROOT") or DEFAULT_DATA_ROOT,
                                   publish_dir=env.get("THUMBLAB_PUBLISH_DIR") or None),
        "trending_source": TrendingSourceResource(**source_kwargs),
        "embedder": ClipEmbedderResource(
            model=env.get("THUMBLAB_CLIP_MODEL") or embedding.DEFAULT_MODEL,
            pretrained=env.get("THUMBLAB_CLIP_PRETRAINED") or embedding.DEFAULT_PRETRAINED,
            device=env.get("THUMBLAB_CLIP_DEVICE") or "auto",
            batch_size=_int_env(env, "THUMBLAB_CLIP_BATCH_SIZE", 32)),
        "thumbnail_fetch": ThumbnailFetchResource(
            max_workers=_int_env(env, "THUMBLAB_FETCH_WORKERS", 8)),
        "index_engine": IndexEngineResource(memory_budget_mb=_int_env(env, "THUMBLAB_INDEX_MEMORY_MB", 2048)),
    }
