"""Resources: where files live, where trending videos come from, how thumbnails are embedded.

Every field that an environment variable sets takes its default, bounds and doc from
``lib/settings.py``; ``resources_from_env`` fills each resource from the settings rows that
target it (see the README's tables). The other fields default to the pipeline's settings
dataclasses, so no default is written twice. Tests build them directly with a temp data root.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout
from thumblab_dagster.lib.collections.catalogue.pipeline import CatalogueSettings
from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.pipeline import GeoSettings
from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.pipeline import MusicSettings, parse_weights
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import FetchSettings, IndexSettings, SourceSettings
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
from thumblab_dagster.lib.embed import clip as embedding
from thumblab_dagster.lib.settings import SETTING, SETTINGS, SettingsError, load_settings
from thumblab_dagster.lib.stores.upload import destination_for


class StorageResource(dg.ConfigurableResource):
    """The data root (parquet, index directories, stats) and the published-index directory."""

    data_root: str = SETTING["data_root"].resource_field()
    publish_dir: str | None = SETTING["publish_dir"].resource_field()
    publish_mode: str = SETTING["publish_mode"].resource_field()

    @property
    def layout(self) -> DataLayout:
        return DataLayout.at(self.data_root, self.publish_dir)


class TrendingSourceResource(dg.ConfigurableResource):
    """YouTube's mostPopular chart when an API key is set, the bundled sample otherwise."""

    api_key: str | None = SETTING["youtube_api_key"].resource_field()
    base_url: str = SETTING["youtube_base_url"].resource_field()
    region_code: str = SETTING["youtube_region_code"].resource_field()
    max_results: int = SETTING["youtube_max_results"].resource_field()
    live_grace_days: int = SETTING["live_grace_days"].resource_field()
    refresh: str = SETTING["trending_refresh"].resource_field()
    today: str | None = Field(default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                              description="The date the live chart counts as today (YYYY-MM-DD); unset: the current "
                                          "date in Australia/Hobart. For tests and recorded-chart servers only.")
    timeout_s: float = Field(default=SourceSettings.timeout_s, gt=0)
    retries: int = Field(default=SourceSettings.retries, ge=0)
    backoff_factor: float = Field(default=SourceSettings.backoff_factor, ge=0)

    @property
    def settings(self) -> SourceSettings:
        return SourceSettings(api_key=self.api_key, base_url=self.base_url, region_code=self.region_code.upper(),
                              max_results=self.max_results, timeout_s=self.timeout_s, retries=self.retries,
                              backoff_factor=self.backoff_factor, live_grace_days=self.live_grace_days,
                              refresh=self.refresh.lower() == "on", today=self.today)


class ClipEmbedderResource(dg.ConfigurableResource):
    """open_clip model, weights (a pretrained tag, a checkpoint path, or "none"), device, batch, precision."""

    model: str = SETTING["clip_model"].resource_field()
    pretrained: str = SETTING["clip_pretrained"].resource_field()
    device: str = SETTING["clip_device"].resource_field()
    batch_size: int = SETTING["clip_batch_size"].resource_field()
    precision: str = SETTING["clip_precision"].resource_field()

    def load(self) -> embedding.LoadedClip:
        return embedding.load_clip(self.model, self.pretrained, self.device, precision=self.precision)


class ThumbnailFetchResource(dg.ConfigurableResource):
    """Bounds on fetching thumbnails: threads, per-request timeout, size cap, retries, failures allowed."""

    max_workers: int = SETTING["fetch_workers"].resource_field()
    timeout_s: float = Field(default=FetchSettings.timeout_s, gt=0)
    max_bytes: int = Field(default=FetchSettings.max_bytes, ge=1024)
    retries: int = Field(default=FetchSettings.retries, ge=0, le=10,
                         description="times a thumbnail that failed in transport is tried again")
    backoff_factor: float = Field(default=FetchSettings.backoff_factor, ge=0, le=10,
                                  description="seconds before the first retry, doubling for each next one")
    max_failed_share: float = SETTING["fetch_max_failed_share"].resource_field()
    retry_later: bool = Field(default=True, description=(
        "let the asset's RetryPolicy re-run a partition that failed in transport (minutes later); "
        "off for in-process runs that should fail at once"))

    @property
    def settings(self) -> FetchSettings:
        return FetchSettings(max_workers=self.max_workers, timeout_s=self.timeout_s, max_bytes=self.max_bytes,
                             retries=self.retries, backoff_factor=self.backoff_factor,
                             max_failed_share=self.max_failed_share)


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
    """How indices are chosen and tuned: a memory budget, the recall@10 they must prove, and the fewest
    references a confident percentile needs."""

    memory_budget_mb: int = SETTING["index_memory_mb"].resource_field()
    target_recall: float = SETTING["index_target_recall"].resource_field()
    source: str = SETTING["index_source"].resource_field()
    min_references: int = SETTING["min_references"].resource_field()
    supabase: SupabaseResource | None = None

    @property
    def settings(self) -> IndexSettings:
        return IndexSettings(memory_budget_bytes=self.memory_budget_mb * 1024 * 1024, target_recall=self.target_recall)

    def store(self):
        """The table to build from and check against, or None when building from parquet."""
        return self.supabase.store() if self.source == "supabase" and self.supabase else None


class GeoResource(dg.ConfigurableResource):
    """Embedding mosaics (geo): the folder the viewport sensor watches and how a viewport is built."""

    mosaic_dir: str | None = SETTING["mosaic_dir"].resource_field()
    expected_bands: int = SETTING["geo_bands"].resource_field()
    sampling_factor: int = SETTING["geo_sampling_factor"].resource_field()
    index_factory: str = SETTING["geo_index_factory"].resource_field()
    float32_copy: bool = Field(default=False, description="also write the plan's float32 all_embeddings_float32.npy "
                                                          "(four times the bytes of the uint8 store)")

    def layout(self, storage: StorageResource) -> GeoLayout:
        return GeoLayout.at(storage.data_root, storage.publish_dir, self.mosaic_dir)

    def settings(self, engine: IndexEngineResource) -> GeoSettings:
        """The build settings, with the index engine's memory budget and target recall."""
        return GeoSettings(expected_bands=self.expected_bands, sampling_factor=self.sampling_factor,
                           index_factory=self.index_factory, float32_copy=self.float32_copy,
                           memory_budget_bytes=engine.settings.memory_budget_bytes,
                           target_recall=engine.target_recall)


class MusicResource(dg.ConfigurableResource):
    """The music collection: the audio folder, its database and how tracks become vectors."""

    music_dir: str | None = SETTING["music_dir"].resource_field()
    db_url: str | None = SETTING["music_db_url"].resource_field()
    features: str = SETTING["music_features"].resource_field()
    weights: str = SETTING["music_weights"].resource_field()
    batch_size: int = SETTING["music_batch"].resource_field()
    force_rebuild: bool = Field(default=False, description="build music_index even when the published library "
                                                           "holds the same analysed files built the same way")

    def layout(self, storage: StorageResource) -> MusicLayout:
        return MusicLayout.at(storage.data_root, storage.publish_dir, self.music_dir)

    def settings(self, engine: IndexEngineResource) -> MusicSettings:
        return MusicSettings(include_tensorflow=self.features == "musicnn", weights=parse_weights(self.weights),
                             batch_size=self.batch_size, memory_budget_bytes=engine.settings.memory_budget_bytes,
                             target_recall=engine.target_recall)


class CatalogueResource(dg.ConfigurableResource):
    """Product catalogues: where products come from, shard size, Ray, and the Storage bucket (the seed's names)."""

    source: str = SETTING["catalogue_source"].resource_field()
    table: str = SETTING["catalogue_table"].resource_field()
    shard_size: int = SETTING["catalogue_shard_size"].resource_field()
    batch_size: int = SETTING["catalogue_batch"].resource_field()
    ray_address: str | None = SETTING["ray_address"].resource_field()
    bucket: str | None = SETTING["bucket_name"].resource_field()
    prefix: str = SETTING["storage_prefix"].resource_field()
    supabase: SupabaseResource | None = None

    def layout(self, storage: StorageResource) -> CatalogueLayout:
        return CatalogueLayout.at(storage.data_root, storage.publish_dir)

    def settings(self, engine: IndexEngineResource) -> CatalogueSettings:
        return CatalogueSettings(source=self.source, table=self.table, shard_size=self.shard_size,
                                 batch_size=self.batch_size, ray_address=self.ray_address,
                                 memory_budget_bytes=engine.settings.memory_budget_bytes,
                                 target_recall=engine.target_recall)

    def supabase_settings(self):
        return self.supabase.settings if self.supabase is not None else None

    def destination(self):
        """``supabase://<BUCKET_NAME>/<PREFIX>`` through the REST gateway."""
        if not self.bucket:
            raise ValueError("BUCKET_NAME is not set: the catalogue has nowhere to upload to")
        return destination_for(f"supabase://{self.bucket}/{self.prefix.strip('/')}", self.supabase_settings())


# The resource a settings row's target names: "storage.data_root" is StorageResource.data_root.
RESOURCES = {"storage": StorageResource, "trending_source": TrendingSourceResource, "embedder": ClipEmbedderResource,
             "thumbnail_fetch": ThumbnailFetchResource, "supabase": SupabaseResource,
             "index_upload": IndexUploadResource, "index_engine": IndexEngineResource, "geo": GeoResource,
             "music": MusicResource, "catalogue": CatalogueResource}


def from_settings(key: str, settings, **extra) -> dg.ConfigurableResource:
    """Resource ``key`` with every field a settings row targets, plus ``extra`` (its nested resources).

    A set secret is bound by its variable's name (``dg.EnvVar``), so the UI and the logs show the
    name, never the value.
    """
    fields = {}
    for setting in SETTINGS:
        owner, _, name = setting.target.partition(".")
        if owner == key:
            value = getattr(settings, setting.name)
            fields[name] = dg.EnvVar(setting.env) if setting.secret and value is not None else value
    return RESOURCES[key](**fields, **extra)


def supabase_resource(settings) -> SupabaseResource | None:
    """The Supabase resource when SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY, are set."""
    supabase = SupabaseSettings.from_env(settings=settings)
    if supabase.problems():
        raise SettingsError(supabase.problems()[0])
    return from_settings("supabase", settings) if supabase.configured else None


def resources_from_env(environ=None) -> dict:
    """The resources ``environ`` (default ``os.environ``) sets; a bad value raises one ``SettingsError`` line."""
    settings = load_settings(environ)
    supabase = supabase_resource(settings)
    from_store = settings.index_source == "supabase"
    if from_store and supabase is None:
        raise SettingsError("THUMBLAB_INDEX_SOURCE=supabase needs SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY")
    resources = {key: from_settings(key, settings) for key in ("storage", "trending_source", "embedder",
                                                               "thumbnail_fetch", "geo", "music")}
    resources["index_engine"] = from_settings("index_engine", settings, supabase=supabase if from_store else None)
    resources["catalogue"] = from_settings("catalogue", settings, supabase=supabase)
    if supabase is not None:
        resources["supabase"] = supabase
    if settings.index_upload_url:  # bound by name: fsspec URLs may carry credentials (sftp://user:pass@...)
        resources["index_upload"] = from_settings("index_upload", settings, supabase=supabase)
    return resources
