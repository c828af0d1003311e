"""Every setting, declared once: its environment variable, type, default, what is allowed, and a doc.

The Dagster resources (``defs/resources.py``), the CLI and the HTTP service all read the
environment through ``load_settings``; nothing else reads these variables. A bad value is one
``SettingsError`` line naming the variable, its value (never a secret's) and what to use::

    YOUTUBE_REGION_CODE='USA': use a two-letter ISO 3166-1 code such as US

The README's configuration tables are ``markdown_table(section)`` (a test keeps them equal);
``python -m thumblab_dagster.lib.settings`` prints them. Pure Python: no Dagster here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from pydantic import Field

CORE, SUPABASE = "core", "supabase"  # the README's "Configuration" and "Supabase" tables


class SettingsError(ValueError):
    """A setting's value is not allowed; the message is one line naming the variable and what to use."""


@dataclass(frozen=True)
class Setting:
    name: str                  # attribute of ``Settings``
    env: str                   # the environment variable
    kind: type                 # str, int, float, or tuple (a comma-separated list of str)
    default: Any
    doc: str                   # one line, markdown (the README's "what" column)
    target: str = ""           # the resource field it fills, or "(service)" (the README's second column)
    shown_default: str = ""    # the README's default column when the value alone says too little
    secret: bool = False       # never in a log, an error, a repr or the UI (resources bind it with dg.EnvVar)
    section: str = CORE
    allowed: str = ""          # what to use, for errors; derived from the type and bounds when empty
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    case: str | None = None    # "lower" / "upper": normalised before it is checked

    @property
    def what_to_use(self) -> str:
        if self.allowed:
            return self.allowed
        if self.choices:
            return " or ".join([", ".join(self.choices[:-1]), self.choices[-1]]) if len(self.choices) > 1 \
                else self.choices[0]
        noun = {int: "a whole number", float: "a number"}.get(self.kind, "a value")
        if self.ge is not None and self.le is not None:
            return f"{noun} from {_num(self.ge)} to {_num(self.le)}"
        bounds = [f"of at least {_num(self.ge)}" if self.ge is not None else "",
                  f"above {_num(self.gt)}" if self.gt is not None else "",
                  f"at most {_num(self.le)}" if self.le is not None else ""]
        return " ".join([noun, " and ".join(b for b in bounds if b)]).strip()

    def error(self, raw: str, why: str = "") -> SettingsError:
        """The one line for a bad value; a secret's value is never shown."""
        shown = self.env if self.secret else f"{self.env}={raw!r}"
        return SettingsError(f"{shown}: {why + ': ' if why else ''}use {self.what_to_use}")

    def parse(self, raw: str) -> Any:
        """The value of a set variable (already stripped, not empty), or ``SettingsError``."""
        text = raw.lower() if self.case == "lower" else raw.upper() if self.case == "upper" else raw
        if self.kind is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        try:
            value = self.kind(text)
        except ValueError:
            raise self.error(raw) from None
        if self.kind is float and not math.isfinite(value):
            raise self.error(raw)
        if (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt) \
                or (self.le is not None and value > self.le):
            raise self.error(raw)
        if (self.pattern and not re.fullmatch(self.pattern, text)) or (self.choices and text not in self.choices):
            raise self.error(raw)
        return value

    @property
    def value_pattern(self) -> str | None:
        """The pattern a resource field checks (pydantic searches, so it is anchored here)."""
        body = "|".join(map(re.escape, self.choices)) if self.choices else self.pattern
        return f"^(?:{body})$" if body else None

    def resource_field(self, **overrides) -> Any:
        """A pydantic ``Field`` with this setting's default, bounds and doc (for the Dagster resources)."""
        # A secret arrives as dg.EnvVar (its name) and was checked here when it was read: no pattern for it.
        kwargs = {"default": self.default, "description": f"{self.doc} (${self.env})",
                  "ge": self.ge, "gt": self.gt, "le": self.le, "pattern": None if self.secret else self.value_pattern}
        kwargs.update(overrides)
        return Field(**{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def _num(x: float) -> str:
    return f"{x:g}"


URL = r"https?://\S+"

SETTINGS: tuple[Setting, ...] = (
    # --- the pipeline (and the query side where they share a setting) ---
    Setting("youtube_api_key", "YOUTUBE_API_KEY", str, None, secret=True, target="trending_source.api_key",
            shown_default="unset: bundled sample",
            doc="YouTube Data API v3 key. Secret: bound with `dg.EnvVar`, sent in the `X-Goog-Api-Key` header, "
                "never in a URL, log, error or metadata value"),
    Setting("youtube_base_url", "YOUTUBE_API_BASE_URL", str, "https://www.googleapis.com/youtube/v3",
            target="trending_source.base_url", pattern=URL,
            allowed="an http(s) URL such as https://www.googleapis.com/youtube/v3",
            doc="point at a proxy or a test server"),
    Setting("youtube_region_code", "YOUTUBE_REGION_CODE", str, "US", target="trending_source.region_code",
            pattern="[A-Za-z]{2}", case="upper", allowed="a two-letter ISO 3166-1 code such as US",
            doc="chart region (ISO 3166-1 alpha-2)"),
    Setting("youtube_max_results", "YOUTUBE_MAX_RESULTS", int, 30, target="trending_source.max_results", ge=1, le=500,
            doc="videos per niche and day (pages past 50)"),
    Setting("live_grace_days", "THUMBLAB_LIVE_GRACE_DAYS", int, 1, target="trending_source.live_grace_days", ge=0,
            doc="YouTube's chart is always today's (Australia/Hobart): with an API key, a date this many days before "
                "today may still collect it (a late run); older dates reuse their trending file, or fail at once "
                "without one"),
    Setting("trending_refresh", "THUMBLAB_TRENDING_REFRESH", str, "off", target="trending_source.refresh",
            choices=("on", "off"), case="lower",
            doc="`on`: re-running a date that the live chart still covers fetches it again instead of reusing its "
                "trending file (older dates never re-fetch)"),
    Setting("partitions_start", "THUMBLAB_PARTITIONS_START", str, "2026-11-01", target="(partitions)",
            pattern=r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", allowed="a date YYYY-MM-DD such as 2026-11-01",
            doc="the first partition date (read when the code location loads). The live API fills only today's "
                "date; the sample source fills any"),
    Setting("data_root", "THUMBLAB_DATA_ROOT", str, "thumblab_data", target="storage.data_root",
            shown_default="`thumblab_data` (relative to the working directory)", doc="where every file is written"),
    Setting("publish_dir", "THUMBLAB_PUBLISH_DIR", str, None, target="storage.publish_dir",
            shown_default="`<data_root>/faiss_indices`", doc="where the scoring service loads indices"),
    Setting("publish_mode", "THUMBLAB_PUBLISH_MODE", str, "0644", target="storage.publish_mode", pattern=r"0?[67][0-7]{2}",
            allowed="an octal file mode such as 0644, or 0640 to keep other users out",
            doc="mode of the published files; their directories get `x` where `r` is set (0644: 0755). Read when "
                "publishing. Index directories under the data root are always 0644/0755"),
    Setting("clip_model", "THUMBLAB_CLIP_MODEL", str, "ViT-B-32", target="embedder.model",
            doc="open_clip model name"),
    Setting("clip_pretrained", "THUMBLAB_CLIP_PRETRAINED", str, "laion2b_s34b_b79k", target="embedder.pretrained",
            doc="open_clip pretrained tag, a local checkpoint path, or `none` for random weights on purpose"),
    Setting("clip_device", "THUMBLAB_CLIP_DEVICE", str, "auto", target="embedder.device",
            pattern=r"auto|cpu|cuda(:[0-9]+)?|mps", case="lower", allowed="auto, cpu, cuda, cuda:N or mps",
            doc="`cpu`, `cuda`, `cuda:N`, `mps`, or `auto` (cuda when available, else cpu)"),
    Setting("clip_batch_size", "THUMBLAB_CLIP_BATCH_SIZE", int, 32, target="embedder.batch_size", ge=1,
            doc="images per forward pass"),
    Setting("clip_precision", "THUMBLAB_CLIP_PRECISION", str, "fp32", target="embedder.precision",
            choices=("fp32", "bf16", "int8", "auto"), case="lower",
            doc="`fp32`, `bf16`, `int8` (dynamic int8 quantisation of the Linear layers, CPU only) or `auto` (bf16 "
                "where the CPU or GPU computes it natively, else int8 on a CPU). A faster precision is kept only "
                "when its embeddings of calibration images and texts stay at cosine >= 0.999 to fp32 at load; "
                "otherwise fp32 with a warning. The precision used is recorded with the embeddings and in `/health`"),
    Setting("fetch_workers", "THUMBLAB_FETCH_WORKERS", int, 8, target="thumbnail_fetch.max_workers", ge=1, le=64,
            doc="concurrent thumbnail downloads (10 s timeout, 5 MiB cap each)"),
    Setting("fetch_max_failed_share", "THUMBLAB_FETCH_MAX_FAILED_SHARE", float, 0.10,
            target="thumbnail_fetch.max_failed_share", ge=0, le=1, allowed="a number from 0 to 1 such as 0.1 (10%)",
            doc="share of a partition's thumbnails that may still fail in transport (refused, reset, timed out, 5xx) "
                "after retries; above it the partition fails and nothing is published. Content failures (404, not "
                "an image) are skipped and counted"),
    Setting("ray_address", "THUMBLAB_RAY_ADDRESS", str, None, target="catalogue.ray_address", shown_default="unset",
            pattern=r"local|auto|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+",
            allowed="local, or a Ray cluster address such as ray://head:10001 (Ray Client) or head:6379",
            doc="run the catalogue's embedding (Ray Data, one CLIP per actor) and shard building (one Ray task per "
                "shard) on Ray: `local` starts a local Ray, otherwise a cluster address whose workers have this "
                "package installed. Unset: in-process, and nothing imports Ray"),
    Setting("index_memory_mb", "THUMBLAB_INDEX_MEMORY_MB", int, 2048, target="index_engine.memory_budget_mb", ge=1,
            doc="memory an index may take, in MiB; decides Flat / HNSW / IVF / IVF-PQ"),
    Setting("index_target_recall", "THUMBLAB_INDEX_TARGET_RECALL", float, 0.95, target="index_engine.target_recall",
            gt=0, le=1, doc="the recall@10 that tuning must prove on held-out queries (approximate indices only)"),
    Setting("min_references", "THUMBLAB_MIN_REFERENCES", int, 30, target="index_engine.min_references", ge=1,
            doc="percentiles from fewer references are flagged not confident (`confident: false` in the CLI and "
                "`/v1/score`, and the `enough_references` check warns)"),
    Setting("mosaic_dir", "THUMBLAB_MOSAIC_DIR", str, None, target="geo.mosaic_dir",
            shown_default="`<data_root>/mosaics`",
            doc="the folder of GeoTIFF embedding mosaics the `viewport_mosaics` sensor watches: one viewport (dynamic "
                "partition) per file, its id from the file name or a `<name>.json` sidecar; `thumblab geo add` links "
                "mosaics in"),
    Setting("geo_bands", "THUMBLAB_GEO_BANDS", int, 128, target="geo.expected_bands", ge=1, le=4096,
            doc="bands (embedding dimensions) a mosaic must have; another count fails the viewport's build in one line"),
    Setting("geo_sampling_factor", "THUMBLAB_GEO_SAMPLING_FACTOR", int, 4, target="geo.sampling_factor", ge=1, le=64,
            doc="the viewport's sampled index holds every F-th pixel of every F-th row; threshold search scans all"),
    Setting("geo_index_factory", "THUMBLAB_GEO_INDEX_FACTORY", str, "plan", target="geo.index_factory",
            pattern=r"plan|auto|[A-Za-z0-9_,.]+", allowed="plan, auto or a faiss factory string such as IVF1024,PQ64",
            doc="the viewport's sampled index: `plan` (IVF1024,PQ64 when the sample can train it, else as `auto`), "
                "`auto` (chosen for the sample within `THUMBLAB_INDEX_MEMORY_MB`) or a faiss factory string"),
    Setting("catalogue_source", "THUMBLAB_CATALOGUE_SOURCE", str, "sample", target="catalogue.source",
            pattern=r"sample|supabase|.+\.(?i:csv|parquet)",
            allowed="sample, supabase, or the path of a .csv or .parquet file",
            doc="the catalogue's products (columns `id`, `image_url`, `brand`; others kept as metadata): `sample` (a "
                "few hundred drawn in-process), `supabase` (the table `THUMBLAB_CATALOGUE_TABLE`, over "
                "`SUPABASE_DB_URL` when set, else `SUPABASE_URL` + `SUPABASE_KEY`) or a local CSV/parquet file"),
    Setting("catalogue_table", "THUMBLAB_CATALOGUE_TABLE", str, "products", target="catalogue.table",
            pattern=r"[A-Za-z_][A-Za-z0-9_]*", allowed="a table name such as products (letters, digits, underscores)",
            doc="the Supabase table the catalogue's products are read from (`THUMBLAB_CATALOGUE_SOURCE=supabase`)"),
    Setting("catalogue_shard_size", "THUMBLAB_CATALOGUE_SHARD_SIZE", int, 100_000, target="catalogue.shard_size",
            ge=1, le=100_000_000, doc="products per shard of the catalogue index (`<prefix>_shard_00000.index`, ...); "
                                      "new products fill the open last shard, then open new ones"),
    Setting("catalogue_batch", "THUMBLAB_CATALOGUE_BATCH", int, 256, target="catalogue.batch_size", ge=1, le=100_000,
            doc="products fetched and embedded per batch (a `Batch N: Total=..., Embedded=...` line after each)"),
    Setting("bucket_name", "BUCKET_NAME", str, None, target="catalogue.bucket", shown_default="unset: no upload",
            pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", allowed="a Supabase Storage bucket name such as faiss-indexes",
            doc="the seed's name: the Supabase Storage bucket the published catalogue index is uploaded to "
                "(needs `SUPABASE_URL` and `SUPABASE_KEY`)"),
    Setting("storage_prefix", "PREFIX", str, "faiss", target="catalogue.prefix",
            pattern=r"[A-Za-z0-9._/-]{1,200}", allowed="a folder path inside the bucket such as faiss or indexes/v2",
            doc="the seed's name: the folder inside `BUCKET_NAME` the catalogue's files go to "
                "(`<bucket>/<prefix>/<catalogue>/...`, the id map last)"),
    Setting("music_dir", "THUMBLAB_MUSIC_DIR", str, None, target="music.music_dir",
            shown_default="`<data_root>/music`",
            doc="the music folder (wav, flac, mp3, ogg; subfolders too) that is scanned and analysed; the sensor "
                "watches it, and every path a user gives must resolve inside it"),
    Setting("music_db_url", "THUMBLAB_MUSIC_DB_URL", str, None, secret=True, target="music.db_url",
            shown_default="unset: an embedded Postgres (`pgserver`) under `<data_root>/music_pg`",
            pattern=r"postgres(?:ql)?(?:\+psycopg)?://\S+",
            allowed="a PostgreSQL URL such as postgresql://user:password@host:5432/music",
            doc="the PostgreSQL database of the music collection's files, analyses and id maps (created "
                "idempotently). Secret: URLs hold passwords"),
    Setting("music_features", "THUMBLAB_MUSIC_FEATURES", str, "musicnn", target="music.features",
            choices=("musicnn", "essentia"), case="lower",
            doc="`musicnn`: 67-d track vectors (50 MusiCNN MSD tags + 17 from Essentia's tempo, key, scale, chroma); "
                "`essentia`: the 17 alone (the API's `include_tensorflow=false`)"),
    Setting("music_weights", "THUMBLAB_MUSIC_WEIGHTS", str, "", target="music.weights",
            pattern=r"((\s*(tags|tempo|key|scale|chroma)\s*=\s*[0-9.]+\s*)(,\s*(tags|tempo|key|scale|chroma)\s*=\s*[0-9.]+\s*)*)?",
            allowed="group=weight pairs such as tags=1,tempo=0.5 (groups: tags, tempo, key, scale, chroma)",
            doc="feature-group weights applied after standardisation (unset: every dimension counts alike)"),
    Setting("music_batch", "THUMBLAB_MUSIC_BATCH", int, 16, target="music.batch_size", ge=1, le=10_000,
            doc="files analysed per batch (a progress line in the run's log after each)"),
    Setting("dagster_home", "DAGSTER_HOME", str, None, shown_default="`.dagster_home` (Makefile)",
            doc="the local Dagster instance (read by Dagster itself)"),
    # --- the HTTP service ---
    Setting("internal_token", "THUMBLAB_INTERNAL_TOKEN", str, None, secret=True, target="(service)",
            shown_default="unset: the `/internal/*` endpoints disabled",
            doc="bearer token for the service's internal endpoints. Secret: never logged or returned"),
    Setting("dagster_url", "THUMBLAB_DAGSTER_URL", str, None, target="(service)", pattern=URL,
            shown_default="unset: run launches answer 503",
            allowed="the Dagster webserver's http(s) URL such as http://127.0.0.1:3000",
            doc="the Dagster webserver whose GraphQL API `/internal/refresh-library` and `/internal/rebuild-indices` "
                "launch runs through (and `/internal/runs/{id}` asks)"),
    Setting("fetch_allow_private", "THUMBLAB_FETCH_ALLOW_PRIVATE", tuple, (), target="(service)", shown_default="unset",
            allowed="comma-separated host names, IPs or CIDRs, each with an optional :port, such as "
                    "127.0.0.1:8080,[::1]:8080,10.0.0.0/8,images.internal:8443",
            doc="comma-separated hosts, IPs or CIDRs that `/v1/score` may fetch thumbnails from although "
                "private/loopback/link-local. `host:port` (`127.0.0.1:8080`, `[::1]:8080`, `images.internal:8443`, "
                "`10.0.0.0/8:8080`) allows that port; an entry without a port allows only 80 (http) and 443 (https)"),
    Setting("fetch_timeout_s", "THUMBLAB_FETCH_TIMEOUT_S", float, 5.0, target="(service)", gt=0,
            allowed="a positive number of seconds such as 5",
            doc="read timeout for thumbnails fetched by `/v1/score` (connect timeout 3 s; a whole fetch, redirects "
                "included, ends after 15 s however slowly the server sends)"),
    Setting("fetch_max_bytes", "THUMBLAB_FETCH_MAX_BYTES", int, 5 * 1024 * 1024, target="(service)", ge=1,
            allowed="a positive whole number of bytes such as 5242880",
            doc="size cap for thumbnails fetched by `/v1/score`"),
    Setting("fetch_max_pixels", "THUMBLAB_FETCH_MAX_PIXELS", int, 4096 * 4096, target="(service)", ge=64,
            shown_default="`16777216` (4096 x 4096)",
            allowed="a whole number of pixels of at least 64 such as 16777216 (4096 x 4096)",
            doc="a thumbnail fetched by `/v1/score` whose header declares more pixels is refused before it is "
                "decoded (a large JPEG is decoded reduced, to about twice CLIP's input size)"),
    Setting("fetch_pool_size", "THUMBLAB_FETCH_POOL_SIZE", int, 32, target="(service)", ge=1, le=256,
            doc="thumbnail downloads `/v1/score` runs at once, over all requests"),
    Setting("fetch_per_request", "THUMBLAB_FETCH_PER_REQUEST", int, 4, target="(service)", ge=1, le=64,
            doc="of those, how many one request may hold: a slow thumbnail server delays only its own request"),
    Setting("max_body_bytes", "THUMBLAB_MAX_BODY_BYTES", int, 65536, target="(service)", ge=1,
            allowed="a positive whole number of bytes such as 65536",
            doc="size cap for a request body to the service: a larger one is a 413, refused before it is parsed"),
    Setting("batch_window_ms", "THUMBLAB_BATCH_WINDOW_MS", float, 5.0, target="(service)", ge=0, le=1000,
            allowed="a number of milliseconds from 0 to 1000 such as 5",
            doc="how long `/v1/score` collects concurrent requests' images (and titles) into one CLIP forward, "
                "from the first one's arrival; 0 batches only what already waits"),
    Setting("batch_max", "THUMBLAB_BATCH_MAX", int, 32, target="(service)", ge=1, le=1024,
            doc="the most images (or titles) in one cross-request CLIP forward of `/v1/score`"),
    # --- Supabase (optional) ---
    Setting("supabase_db_url", "SUPABASE_DB_URL", str, None, secret=True, section=SUPABASE, target="supabase.db_url",
            shown_default="unset",
            doc="direct Postgres URL (secret). Preferred: bulk upserts with psycopg, and `thumblab supabase-migrate`"),
    Setting("supabase_url", "SUPABASE_URL", str, None, section=SUPABASE, target="supabase.url", shown_default="unset",
            pattern=URL, allowed="the project's URL such as https://<project>.supabase.co",
            doc="the REST gateway (with `SUPABASE_KEY`): supabase-py for PostgREST, RPC and Storage. Used when no DB "
                "URL is set, and always for `supabase://` uploads"),
    Setting("supabase_key", "SUPABASE_KEY", str, None, secret=True, section=SUPABASE, target="supabase.key",
            shown_default="unset", doc="a service-role key for `SUPABASE_URL` (secret)"),
    Setting("supabase_retention_days", "THUMBLAB_SUPABASE_RETENTION_DAYS", int, 90, section=SUPABASE,
            target="supabase.retention_days", ge=1,
            doc="after each upsert, the niche's rows whose partition date is before the last this many dates "
                "(ending at the partition's) are deleted"),
    Setting("index_source", "THUMBLAB_INDEX_SOURCE", str, "parquet", section=SUPABASE, target="index_engine.source",
            choices=("parquet", "supabase"), case="lower",
            doc="`parquet` or `supabase`: build each niche's index from `ref_thumbnails` instead of the parquet "
                "files. The alignment check then compares against the table"),
    Setting("index_upload_url", "THUMBLAB_INDEX_UPLOAD_URL", str, None, secret=True, section=SUPABASE,
            target="index_upload.url", shown_default="unset", pattern=r"[A-Za-z][A-Za-z0-9+.-]*://\S*",
            allowed="a URL such as supabase://<bucket>/<prefix>, s3://..., gs://... or file://...",
            doc="copy every checked index directory to `supabase://<bucket>/<prefix>` (Supabase Storage) or any fsspec "
                "URL (`s3://`, `gs://` with s3fs/gcsfs installed, `file://`). Secret: URLs may carry credentials"),
)

SETTING: dict[str, Setting] = {s.name: s for s in SETTINGS}

# The values, one attribute per setting (secrets left out of the repr).
Settings = make_dataclass(
    "Settings", [(s.name, s.kind if s.default is not None else s.kind | None, field(default=s.default, repr=not s.secret))
                 for s in SETTINGS], frozen=True)
Settings.__doc__ = "Every setting's value, as ``load_settings`` read them (see ``SETTINGS``)."
Settings.__module__ = __name__


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting from ``environ`` (default ``os.environ``); unset or blank means the default.

    Raises ``SettingsError``: one line naming each bad variable (``; `` between several).
    """
    env = os.environ if environ is None else environ
    values, problems = {}, []
    for setting in SETTINGS:
        raw = (env.get(setting.env) or "").strip()
        try:
            values[setting.name] = setting.parse(raw) if raw else setting.default
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return Settings(**values)


def _cell(setting: Setting) -> str:
    if setting.shown_default:
        return setting.shown_default
    if isinstance(setting.default, tuple):
        return ",".join(setting.default) or "unset"
    return f"`{_num(setting.default) if isinstance(setting.default, float) else setting.default}`"


def markdown_table(section: str = CORE) -> str:
    """The README's table of one section's settings (README.md holds exactly this text)."""
    rows = ["| variable | resource setting | default | what |", "|---|---|---|---|"]
    for s in SETTINGS:
        if s.section == section:
            target = f"`{s.target}`" if s.target and not s.target.startswith("(") else s.target
            rows.append(f"| `{s.env}` | {target} | {_cell(s)} | {s.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(f"{markdown_table(CORE)}\n\n{markdown_table(SUPABASE)}")
