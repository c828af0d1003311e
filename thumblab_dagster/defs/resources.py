"""Resources: where files live, where trending videos come from, how thumbnails are embedded.

Every field that an environment variable sets takes its default, bounds and doc from
``lib/settings.py``; ``resources_from_env`` fills them from ``load_settings`` (see the README's
tables). Tests build them directly with a temp data root.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import FetchSettings, IndexSettings, SourceSettings
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
from thumblab_dagster.lib.embed import clip as embedding
from thumblab_dagster.lib.settings import SETTING, SettingsError, load_settings
from thumblab_dagster.lib.stores.upload import destination_for


class StorageResource(dg.ConfigurableResource):
    """The data root (parquet, index directories, stats) and the published-index directory."""

    data_root: str = SETTING["data_root"].resource_field()
    publish_dir: str | None = SETTING["publish_dir"].resource_field()

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_root, self.publish_dir)


class TrendingSourceResource(dg.ConfigurableResource):
    """YouTube's mostPopular chart when an API key is set, the bundled sample otherwise."""

    api_key: str | None = SETTING["youtube_api_key"].resource_field()
    base_url: str = SETTING["youtube_base_url"].resource_field()
    region_code: str = SETTING["youtube_region_code"].resource_field()
    max_results: int = SETTING["youtube_max_results"].resource_field()
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

    model: str = SETTING["clip_model"].resource_field()
    pretrained: str = SETTING["clip_pretrained"].resource_field()
    device: str = SETTING["clip_device"].resource_field()
    batch_size: int = SETTING["clip_batch_size"].resource_field()

    def load(self) -> embedding.LoadedClip:
        return embedding.load_clip(self.model, self.pretrained, self.device)


class ThumbnailFetchResource(dg.ConfigurableResource):
    """Bounds on fetching thumbnails: threads, per-request timeout, size cap."""

    max_workers: int = SETTING["fetch_workers"].resource_field()
    timeout_s: float = Field(default=10.0, gt=0)
    max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)

    @property
    def settings(self) -> FetchSettings:
        return FetchSettings(self.max_workers, self.timeout_s, self.max_bytes)


class SupabaseResource(dg.ConfigurableResource):
    """The shared reference store: Postgres + pgvector behind Supabase (see README, "Supabase")."""

    url: str | None = SETTING["supabase_url"].resource_field()
    key: str | None = SETTING["supabase_key"].resource_field()
    db_url: str | None = SETTING["supabase_db_url"].resource_field()
    retention_days: int = SETTING["supabase_retention_days"].resource_field()
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Rows per upsert batch.")

    @property
    def settings(self) -> SupabaseSettings:
        return SupabaseSettings(self.url, self.key, self.db_url)

    def store(self):
        return self.settings.store()


class IndexUploadResource(dg.ConfigurableResource):
    """Where verified index directories are copied: supabase://<bucket>/<prefix> or an fsspec URL."""

    url: str = SETTING["index_upload_url"].resource_field(default=...)  # required
    supabase: SupabaseResource | None = None

    def destination(self):
        return destination_for(self.url, self.supabase.settings if self.supabase else None)


class IndexEngineResource(dg.ConfigurableResource):
    """How indices are chosen and tuned: a memory budget and the recall@10 they must prove."""

    memory_budget_mb: int = SETTING["index_memory_mb"].resource_field()
    target_recall: float = SETTING["index_target_recall"].resource_field()
    source: str = SETTING["index_source"].resource_field()
    supabase: SupabaseResource | None = None

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings(memory_budget_bytes=self.memory_budget_mb * 1024 * 1024, target_recall=self.target_recall)

    def store(self):
        """The table to build from and check against, or None when building from parquet."""
        return self.supabase.store() if self.source == "supabase" and self.supabase else None


def _secret(settings, name: str) -> dg.EnvVar | None:
    """A secret bound by its variable's name, so the UI and the logs show the name, never the value."""
    return dg.EnvVar(SETTING[name].env) if getattr(settings, name) else None


def supabase_resource(settings) -> SupabaseResource | None:
    """The Supabase resource when SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY, are set."""
    supabase = SupabaseSettings(settings.supabase_url, settings.supabase_key, settings.supabase_db_url)
    if supabase.problems():
        raise SettingsError(supabase.problems()[0])
    if not supabase.configured:
        return None
    return SupabaseResource(url=settings.supabase_url, key=_secret(settings, "supabase_key"),
                            db_url=_secret(settings, "supabase_db_url"),
                            retention_days=settings.supabase_retention_days)


def resources_from_env(environ=None) -> dict:
    """The resources ``environ`` (default ``os.environ``) sets; a bad value raises one ``SettingsError`` line."""
    settings = load_settings(environ)
    supabase = supabase_resource(settings)
    if settings.index_source == "supabase" and supabase is None:
        raise SettingsError("THUMBLAB_INDEX_SOURCE=supabase needs SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY")
    resources = {
        "storage": StorageResource(data_root=settings.data_root, publish_dir=settings.publish_dir),
        "trending_source": TrendingSourceResource(
            api_key=_secret(settings, "youtube_api_key"), base_url=settings.youtube_base_url,
            region_code=settings.youtube_region_code, max_results=settings.youtube_max_results),
        "embedder": ClipEmbedderResource(model=settings.clip_model, pretrained=settings.clip_pretrained,
                                         device=settings.clip_device, batch_size=settings.clip_batch_size),
        "thumbnail_fetch": ThumbnailFetchResource(max_workers=settings.fetch_workers),
        "index_engine": IndexEngineResource(memory_budget_mb=settings.index_memory_mb,
                                            target_recall=settings.index_target_recall, source=settings.index_source,
                                            supabase=supabase if settings.index_source == "supabase" else None),
    }
    if supabase is not None:
        resources["supabase"] = supabase
    if settings.index_upload_url:
        # EnvVar: fsspec URLs may carry credentials (sftp://user:pass@..., signed query strings)
        resources["index_upload"] = IndexUploadResource(url=_secret(settings, "index_upload_url"), supabase=supabase)
    return resources
