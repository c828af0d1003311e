"""Resources: where files live, where trending videos come from, how thumbnails are embedded.

``resources_from_env`` picks them from the environment (see the README's table); tests build
them directly with a temp data root.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from thumblab_dagster.lib.collections.thumbnails.layout import DEFAULT_DATA_ROOT, DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import FetchSettings, IndexSettings, SourceSettings
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
from thumblab_dagster.lib.collections.thumbnails.youtube import DEFAULT_BASE_URL
from thumblab_dagster.lib.embed import clip as embedding
from thumblab_dagster.lib.stores.upload import destination_for


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


class SupabaseResource(dg.ConfigurableResource):
    """The shared reference store: Postgres + pgvector behind Supabase (see README, "Supabase")."""

    url: str | None = Field(default=None, description="SUPABASE_URL: the project's REST gateway.")
    key: str | None = Field(default=None, description="SUPABASE_KEY (secret): a service-role key.")
    db_url: str | None = Field(default=None, description="SUPABASE_DB_URL (secret): direct Postgres URL; "
                               "preferred for bulk upserts and migrations.")
    retention_days: int = Field(default=90, ge=1, description="Rows older than this many days are deleted.")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Rows per upsert batch.")

    @property
    def settings(self) -> SupabaseSettings:
        return SupabaseSettings(self.url, self.key, self.db_url)

    def store(self):
        return self.settings.store()


class IndexUploadResource(dg.ConfigurableResource):
    """Where verified index directories are copied: supabase://<bucket>/<prefix> or an fsspec URL."""

    url: str = Field(description="THUMBLAB_INDEX_UPLOAD_URL: supabase://bucket/prefix, s3://..., gs://..., file://...")
    supabase: SupabaseResource | None = None

    def destination(self):
        return destination_for(self.url, self.supabase.settings if self.supabase else None)


class IndexEngineResource(dg.ConfigurableResource):
    """How indices are chosen and tuned: a memory budget and the recall@10 they must prove."""

    memory_budget_mb: int = Field(default=2048, ge=1, description="Memory an index may take; "
                                  "choose_index picks Flat / HNSW / IVF / IVF-PQ to fit it.")
    target_recall: float = Field(default=0.95, gt=0, le=1, description="recall@10 that tuning must reach "
                                 "on held-out queries (approximate indices only).")

    source: str = Field(default="parquet", pattern="^(parquet|supabase)$", description="Build from the "
                        "embeddings parquet files, or from Supabase's ref_thumbnails table (THUMBLAB_INDEX_SOURCE).")
    supabase: SupabaseResource | None = None

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings(memory_budget_bytes=self.memory_budget_mb * 1024 * 1024, target_recall=self.target_recall)

    def store(self):
        """The table to build from and check against, or None when building from parquet."""
        return self.supabase.store() if self.source == "supabase" and self.supabase else None


def _int_env(env, name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number: set it to e.g. {default} or unset it") from None


def supabase_from_env(env) -> SupabaseResource | None:
    """The Supabase resource when SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY, are set."""
    settings = SupabaseSettings.from_env(env)
    if settings.problems():
        raise ValueError(settings.problems()[0])
    if not settings.configured:
        return None
    # EnvVar: the UI shows the variables' names, never their values.
    return SupabaseResource(url=env.get("SUPABASE_URL") or None,
                            key=dg.EnvVar("SUPABASE_KEY") if env.get("SUPABASE_KEY") else None,
                            db_url=dg.EnvVar("SUPABASE_DB_URL") if env.get("SUPABASE_DB_URL") else None,
                            retention_days=_int_env(env, "THUMBLAB_SUPABASE_RETENTION_DAYS", 90))


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
    resources = {
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
    }
    supabase = supabase_from_env(env)
    source = (env.get("THUMBLAB_INDEX_SOURCE") or "parquet").strip().lower()
    if source not in ("parquet", "supabase"):
        raise ValueError(f"THUMBLAB_INDEX_SOURCE={source!r}: use parquet (default) or supabase")
    if source == "supabase" and supabase is None:
        raise ValueError("THUMBLAB_INDEX_SOURCE=supabase needs SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY")
    resources["index_engine"] = IndexEngineResource(memory_budget_mb=_int_env(env, "THUMBLAB_INDEX_MEMORY_MB", 2048),
                                                    source=source, supabase=supabase if source == "supabase" else None)
    if supabase is not None:
        resources["supabase"] = supabase
    if env.get("THUMBLAB_INDEX_UPLOAD_URL"):
        # EnvVar: fsspec URLs may carry credentials (sftp://user:pass@..., signed query strings)
        resources["index_upload"] = IndexUploadResource(url=dg.EnvVar("THUMBLAB_INDEX_UPLOAD_URL"), supabase=supabase)
    return resources
