"""A viewport from mosaic to published set: the steps the Dagster assets call one by one and
``thumblab geo build`` calls in a row (``build_viewport``), with the same checks.

    skip_reason   the published set came from this very mosaic, built the same way: nothing to do
    build_store   pixel_store: the mosaic read strip by strip into ``all_embeddings.npy`` + mask + norms
    build_index   pixel_index: the engine's index over the grid sample, the store's files beside it
                  (hard links) and its metadata.json with the factory, one manifest covering all
    check_alignment / check_recall   the blocking check (``viewport_alignment``) and recall (WARN)
    publish_viewport   ``<publish_dir>/<viewport_id>/`` as one set (the engine's ``DirectoryLayout``)
    viewport_stats     size, speed, neighbour similarity of the sampled index, threshold-search time
    build_preview      the PCA colour view (``preview.write_preview``); its failure never stops the rest

Build settings (``GeoSettings``) are recorded in metadata.json's ``build_settings``; a changed
setting rebuilds the viewport, as a changed mosaic does.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.geo.alignment import viewport_alignment
from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster.lib.collections.geo.metadata import (
    METADATA_FILE,
    MetadataError,
    read_metadata,
    unchanged,
    viewport_id_from,
    write_metadata,
)
from thumblab_dagster.lib.collections.geo.mosaic import EXPECTED_BANDS, fingerprint, open_mosaic
from thumblab_dagster.lib.collections.geo.preview import Preview, write_preview
from thumblab_dagster.lib.collections.geo.search import make_query, threshold_search
from thumblab_dagster.lib.collections.geo.store import DEFAULT_SAMPLING_FACTOR, PixelStore, build_pixel_store
from thumblab_dagster.lib.engine import stats as index_stats
from thumblab_dagster.lib.engine.build import POSITIONS, build_index_dir
from thumblab_dagster.lib.engine.choice import choose_index
from thumblab_dagster.lib.engine.files import FILE_MODE, link_or_copy, remove_tree, write_json_atomic
from thumblab_dagster.lib.engine.index_dir import INDEX_FILE, load_index_dir, read_manifest
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.publish import DirectoryLayout, PublishResult, publish, snapshot_of
from thumblab_dagster.lib.engine.search import nlist_of
from thumblab_dagster.lib.engine.spec import DEFAULT_MEMORY_BUDGET, IndexSpec
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, verify_recall
from thumblab_dagster.lib.engine.validate import AlignmentReport

log = logging.getLogger(__name__)

PLAN, AUTO = "plan", "auto"
PLAN_FACTORY = "IVF1024,PQ64"           # the plan's index over the grid sample
MIN_TRAIN_PER_LIST = 39                 # faiss wants 39..256 training points a list
# The seed's file names; linked, not copied: a viewport's 2.5 GB pixel store is not held twice on disk
PUBLISHED_LAYOUT = DirectoryLayout({INDEX_FILE: "embeddings.index"}, link=True)
STATS_QUERIES = 3
STATS_THRESHOLD = 0.9


@dataclass(frozen=True)
class GeoSettings:
    """How a viewport is built (``THUMBLAB_GEO_*``, the index engine's budget and recall)."""

    expected_bands: int | None = EXPECTED_BANDS
    sampling_factor: int = DEFAULT_SAMPLING_FACTOR
    index_factory: str = PLAN              # "plan", "auto" or a faiss factory string
    float32_copy: bool = False
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL

    @classmethod
    def from_settings(cls, settings, **overrides) -> GeoSettings:
        """From ``load_settings()``'s values; ``overrides`` (None ignored) win."""
        values = {"expected_bands": settings.geo_bands, "sampling_factor": settings.geo_sampling_factor,
                  "index_factory": settings.geo_index_factory,
                  "memory_budget_bytes": settings.index_memory_mb * 1024 * 1024,
                  "target_recall": settings.index_target_recall}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def index_settings(self) -> dict:
        """What decides the index (joins the store's own settings in ``build_settings``)."""
        return {"index_factory": self.index_factory, "memory_budget_bytes": int(self.memory_budget_bytes),
                "target_recall": float(self.target_recall)}

    def build_settings(self) -> dict:
        """``build_settings`` exactly as the published metadata.json records them (``unchanged`` compares)."""
        return {"sampling_factor": self.sampling_factor, "faiss_index_type": None,
                "float32_copy": bool(self.float32_copy), "expected_bands": self.expected_bands,
                **self.index_settings()}


# --- skip when unchanged ----------------------------------------------------------------------

def published_metadata(layout: GeoLayout, viewport_id: str) -> dict | None:
    """The published set's metadata.json, or None when nothing (readable) is published."""
    try:
        return read_metadata(layout.viewport(viewport_id))
    except MetadataError:
        return None


def skip_reason(layout: GeoLayout, viewport_id: str, mosaic_path: str | os.PathLike,
                settings: GeoSettings) -> str | None:
    """Why nothing needs building (the published set is this mosaic built this way), or None."""
    published = published_metadata(layout, viewport_id)
    if published is None:
        return None
    content = fingerprint(mosaic_path)
    if not unchanged(published, content, settings.build_settings()):
        return None
    return (f"viewport {viewport_id} is unchanged: {Path(mosaic_path).name} (fingerprint {content[:12]}) and the "
            f"build settings match the published copy; nothing rebuilt, every published file left as it was")


def index_skip_reason(layout: GeoLayout, viewport_id: str, settings: GeoSettings) -> str | None:
    """Why the index need not be built: the published set came from the mosaic the store holds, built
    the same way (no mosaic hashing: the store recorded its fingerprint)."""
    published = published_metadata(layout, viewport_id)
    try:
        stored = read_metadata(layout.store_dir(viewport_id))
    except MetadataError:
        return None
    content = stored["mosaic_fingerprint"]
    if published is None or not unchanged(published, content, settings.build_settings()):
        return None
    return (f"viewport {viewport_id} is unchanged: the published index was built from the same mosaic "
            f"(fingerprint {content[:12]}) with the same settings; nothing rebuilt")


# --- pixel_store ----------------------------------------------------------------------------

def build_store(layout: GeoLayout, viewport_id: str, mosaic_path: str | os.PathLike, settings: GeoSettings,
                progress: Progress | None = None) -> dict:
    """The viewport's pixel store (replaced in one step); its metadata."""
    return build_pixel_store(mosaic_path, layout.store_dir(viewport_id), viewport_id=viewport_id,
                             sampling_factor=settings.sampling_factor, float32_copy=settings.float32_copy,
                             expected_bands=settings.expected_bands, extra_settings=settings.index_settings(),
                             progress=progress)


# --- pixel_index ----------------------------------------------------------------------------

def index_factory(setting: str, n: int, d: int, memory_budget_bytes: int) -> str:
    """The factory for ``n`` sampled vectors of ``d`` dimensions: ``plan`` is IVF1024,PQ64 when the
    sample can train 1024 lists and 64 sub-quantizers divide ``d``, else what ``auto`` chooses."""
    if setting == PLAN:
        if n >= nlist_of(PLAN_FACTORY) * MIN_TRAIN_PER_LIST and d % 64 == 0:
            return PLAN_FACTORY
        setting = AUTO
    if setting == AUTO:
        return choose_index(n, d, memory_budget_bytes) if n else "Flat"
    return setting


def build_index(layout: GeoLayout, viewport_id: str, settings: GeoSettings,
                progress: Progress | None = None) -> Manifest:
    """The sampled index over the store's grid sample, written with the store's files as one directory."""
    store = PixelStore(layout.store_dir(viewport_id))
    source = store.sample_source()
    factory = index_factory(settings.index_factory, source.n, source.d, settings.memory_budget_bytes)
    if settings.index_factory == PLAN and factory != PLAN_FACTORY:
        report(log, progress, "choose", f"{viewport_id}: the plan's {PLAN_FACTORY} needs "
                                        f"{nlist_of(PLAN_FACTORY) * MIN_TRAIN_PER_LIST:,} sampled pixels and bands "
                                        f"divisible by 64 ({source.n:,} x {source.d} here): {factory} instead")
    target = layout.index_dir(viewport_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(os.path.join(target.parent, f".{target.name}.files.{os.getpid()}.{os.urandom(3).hex()}"))
    staged.mkdir()
    try:
        files = {}
        for name in store.metadata["files"]:
            link_or_copy(store.directory / name, staged / name)   # the store is replaced whole, never edited
            files[name] = staged / name
        metadata = {**store.metadata, "faiss_index_type": factory, "num_sampled_pixels": source.n,
                    "build_settings": {**store.metadata["build_settings"], **settings.index_settings()}}
        write_metadata(staged, metadata)
        files[METADATA_FILE] = staged / METADATA_FILE
        spec = IndexSpec(
            factory=factory, memory_budget_bytes=settings.memory_budget_bytes, target_recall=settings.target_recall,
            embedding={"identity": f"mosaic {store.bands} bands ({metadata['source_dtype']})", "bands": store.bands,
                       "source_dtype": metadata["source_dtype"], "storage_dtype": metadata["storage_dtype"],
                       "normalised": "L2, decoded codes"},
            source_partitions=[viewport_id], extra_files=files, progress=progress,
            extra={"viewport_id": viewport_id, "mosaic_fingerprint": metadata["mosaic_fingerprint"],
                   "sampling_factor": int(metadata["sampling_factor"]),
                   "num_total_pixels": int(metadata["num_total_pixels"])})
        return build_index_dir(target, source, POSITIONS, spec)
    finally:
        remove_tree(staged)


def check_alignment(layout: GeoLayout, viewport_id: str, mosaic_path: str | os.PathLike | None) -> AlignmentReport:
    """The blocking check: the index directory's store against the mosaic, its index against its store."""
    directory = layout.index_dir(viewport_id)
    return viewport_alignment(directory, directory, mosaic_path)


def check_recall(layout: GeoLayout, viewport_id: str) -> dict:
    """Recall@10 of the sampled index against exact search over the grid sample, on fresh queries."""
    directory = layout.index_dir(viewport_id)
    # id_map_alignment verifies every checksum; hashing the pixel store again here would only cost time
    loaded = load_index_dir(directory, verify=False)
    return verify_recall(loaded, PixelStore(directory).sample_source())


# --- the published set ------------------------------------------------------------------------

def publish_viewport(layout: GeoLayout, viewport_id: str, mode: int = FILE_MODE) -> PublishResult:
    directory = layout.index_dir(viewport_id)
    return publish(directory, layout.published, viewport_id, snapshot_of(read_manifest(directory)), mode=mode,
                   layout=PUBLISHED_LAYOUT)


def published_viewports(layout: GeoLayout) -> dict[str, dict]:
    """Every published viewport -> its metadata.json (each directory resolved once)."""
    found = {}
    if layout.published.is_dir():
        for entry in sorted(layout.published.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            directory = Path(os.path.realpath(entry))
            try:
                found[entry.name] = {**read_metadata(directory), "directory": str(directory)}
            except MetadataError:
                continue                      # another collection's directory, or not a viewport
    return found


# --- stats ----------------------------------------------------------------------------------

def viewport_stats(layout: GeoLayout, viewport_id: str) -> tuple[dict, bytes]:
    """Stats JSON (written under geo/stats/) and a neighbour-similarity histogram PNG."""
    directory = layout.index_dir(viewport_id)
    manifest = read_manifest(directory)
    loaded = load_index_dir(directory, verify=False)   # id_map_alignment verified the checksums
    measured = index_stats.measure(loaded)
    nn = measured.pop("nn_similarity")
    store = PixelStore(directory)
    stats = {"viewport_id": viewport_id, "pixels": store.n, "nodata_pixels": int(store.metadata["nodata_pixels"]),
             "sampled_pixels": loaded.ntotal, "dim": store.bands, "factory": manifest.factory,
             "search_params": dict(manifest.search_params), "build_seconds": manifest.get("build_seconds"),
             "file_bytes": {name: entry.bytes for name, entry in manifest.files.items()},
             "total_bytes": sum(entry.bytes for entry in manifest.files.values()),
             "threshold_search_ms": _threshold_search_ms(store), **measured}
    write_json_atomic(layout.stats(viewport_id), stats)
    png = index_stats.histogram_png(nn, f"{viewport_id}: nearest-neighbour similarity of sampled pixels")
    return stats, png


def _threshold_search_ms(store: PixelStore) -> float | None:
    """Median time of an exact threshold search over every pixel, querying sampled pixels' own vectors."""
    positions = store.sample_positions()
    if not len(positions):
        return None
    picked = positions[np.linspace(0, len(positions) - 1, STATS_QUERIES).astype(int)]
    times = []
    for position in picked:
        query = make_query(store, vector=store.vectors([position])[0])
        start = time.perf_counter()
        threshold_search(store, query, STATS_THRESHOLD, limit=100)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


# --- viewport_preview -------------------------------------------------------------------------

def build_preview(layout: GeoLayout, viewport_id: str, progress: Progress | None = None) -> Preview:
    return write_preview(layout.store_dir(viewport_id), layout.preview_dir(viewport_id), progress)


# --- everything in a row (the CLI) ------------------------------------------------------------

class AlignmentFailed(RuntimeError):
    """The blocking check failed: nothing was published."""

    def __init__(self, viewport_id: str, report: AlignmentReport):
        super().__init__(f"viewport {viewport_id} failed id_map_alignment, nothing published: "
                         f"{'; '.join(report.problems[:3])}")
        self.report = report


@dataclass
class ViewportBuild:
    viewport_id: str
    mosaic: str
    skipped: str | None = None                     # the reason nothing was built
    store: dict = field(default_factory=dict)      # the store's metadata
    factory: str | None = None
    alignment: dict = field(default_factory=dict)
    recall: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    preview: dict = field(default_factory=dict)
    preview_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def build_viewport(layout: GeoLayout, mosaic_path: str | os.PathLike, settings: GeoSettings, *,
                   viewport_id: str | None = None, mode: int = FILE_MODE, preview: bool = True,
                   progress: Progress | None = None) -> ViewportBuild:
    """Store, index, checks, publish and preview of one mosaic, in the order the assets run.

    Raises ``MosaicError`` / ``ValueError`` (a bad mosaic or id, one line) and ``AlignmentFailed``
    (nothing published). A failed preview is recorded, never raised.
    """
    mosaic = open_mosaic(mosaic_path, settings.expected_bands)          # a bad mosaic: one line, before anything
    viewport_id = viewport_id or viewport_id_from(mosaic.path)
    result = ViewportBuild(viewport_id, str(mosaic.path))
    result.skipped = skip_reason(layout, viewport_id, mosaic.path, settings)
    if result.skipped:
        log.info(result.skipped)
        return result
    result.store = build_store(layout, viewport_id, mosaic.path, settings, progress)
    result.factory = build_index(layout, viewport_id, settings, progress).factory
    alignment = check_alignment(layout, viewport_id, mosaic.path)
    result.alignment = {"passed": alignment.passed, "problems": alignment.problems, **alignment.metrics}
    if not alignment.passed:
        raise AlignmentFailed(viewport_id, alignment)
    result.recall = check_recall(layout, viewport_id)
    if not result.recall["passed"]:
        log.warning("%s: recall@10 %.3f misses the target %s", viewport_id, result.recall["recall"],
                    result.recall["target_recall"])
    published = publish_viewport(layout, viewport_id, mode)
    result.published = {"published": published.published, "reason": published.reason, **published.paths}
    if preview:
        try:
            made = build_preview(layout, viewport_id, progress)
            result.preview = {"tif": str(made.tif), "png": str(made.png), "overviews": list(made.overviews)}
        except Exception as exc:  # the preview never blocks the viewport
            result.preview_error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: preview failed: %s", viewport_id, result.preview_error)
    return result
