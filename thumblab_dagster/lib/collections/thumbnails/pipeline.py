"""The thumbnail pipeline's steps, one function per asset, free of Dagster.

Each step reads its inputs from the data layout, writes its output atomically and returns a
plain summary the asset turns into metadata. ``log`` is any ``logging.Logger``-like object
(the assets pass Dagster's).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from thumblab_dagster.lib.collections.thumbnails import sample_source
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.niches import WINDOW_DAYS, category_id
from thumblab_dagster.lib.collections.thumbnails.trending import frame_from_items, read_trending, write_trending
from thumblab_dagster.lib.collections.thumbnails.window import Window, load_window, load_window_from_store, window_dates
from thumblab_dagster.lib.collections.thumbnails.youtube import YouTubeClient
from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images, embed_texts, read_embeddings, write_embeddings
from thumblab_dagster.lib.embed.images import fetch_images, reason_kind
from thumblab_dagster.lib.engine import index_dir as vector_index
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine import stats as index_stats
from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.files import write_json_atomic
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.percentiles import row_weights
from thumblab_dagster.lib.engine.spec import DEFAULT_MEMORY_BUDGET, IndexSpec, ReferenceSpec, SideIndexSpec
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, verify_recall
from thumblab_dagster.lib.engine.validate import AlignmentReport, check_alignment

_default_log = logging.getLogger(__name__)

INDEX_METRIC = "inner_product"
PERCENTILE_K = 10  # neighbours averaged for the similarity percentile (reference stored with the index)
PERCENTILE_WEIGHT = "views_per_hour"  # the weighted percentile's weight: log1p of this column
WEIGHTINGS = (PERCENTILE_WEIGHT,)  # the weightings a thumbnail percentile may ask for (the query side offers these)
ID_COLUMN = "video_id"  # the metadata column holding each row's id (the validator compares it with ids.npy)
TITLES_KEY = "titles"  # manifest entry of the title side index: title_vectors.npy + title_reference_scores.npy


# --- trending_videos ----------------------------------------------------------------------

@dataclass
class SourceSettings:
    api_key: str | None = None
    base_url: str | None = None
    region_code: str = "US"
    max_results: int = 30
    timeout_s: float = 15.0
    retries: int = 3
    backoff_factor: float = 1.0

    @property
    def kind(self) -> str:
        return "youtube" if self.api_key else "sample"


@dataclass
class TrendingOutcome:
    source: str
    rows: int
    warnings: list[str]
    frame: object


def collect_trending(layout: DataLayout, niche: str, date: str, source: SourceSettings,
                     log=_default_log) -> TrendingOutcome:
    cat = category_id(niche)
    if source.kind == "youtube":
        client = YouTubeClient(source.api_key, base_url=source.base_url, region_code=source.region_code,
                               timeout_s=source.timeout_s, retries=source.retries,
                               backoff_factor=source.backoff_factor)
        chart = client.most_popular(cat, source.max_results)
        items, warnings, collected = chart.items, chart.warnings, datetime.now(timezone.utc)
    else:
        items, warnings = sample_source.trending_items(niche, date, source.max_results), []
        collected = sample_source.collection_time(date)
    for warning in warnings:
        log.warning(warning)
    frame = frame_from_items(items, niche, cat, collected)
    write_trending(layout.trending(niche, date), frame, source.kind)
    log.info(f"collected {len(frame)} {niche} videos for {date} from the {source.kind} source")
    return TrendingOutcome(source.kind, len(frame), warnings, frame)


# --- thumbnail_embeddings -----------------------------------------------------------------

@dataclass
class FetchSettings:
    max_workers: int = 8
    timeout_s: float = 10.0
    max_bytes: int = 5 * 1024 * 1024


@dataclass
class EmbeddingOutcome:
    embedded: int
    skipped: int
    skip_reasons: dict[str, int]
    skipped_examples: list[str]
    weights: dict
    dim: int
    seconds: float


class NothingToEmbedError(RuntimeError):
    pass


EMBEDDING_COLUMNS = ["video_id", "niche", "title", "channel_title", "thumbnail_url", "published_at",
                     "view_count", "views_per_hour", "collected_at"]


def embed_thumbnails(layout: DataLayout, niche: str, date: str, clip: LoadedClip,
                     fetch: FetchSettings, batch_size: int = 32, log=_default_log) -> EmbeddingOutcome:
    """Fetch and embed the partition's thumbnails; broken ones are skipped and counted."""
    start = time.perf_counter()
    frame = read_trending(layout.trending(niche, date))
    urls = frame["thumbnail_url"].tolist()
    log.info(f"fetching {len(urls)} thumbnails ({fetch.max_workers} threads)")
    results = fetch_images(urls, max_workers=fetch.max_workers, timeout_s=fetch.timeout_s,
                           max_bytes=fetch.max_bytes, schemes=sample_source.FETCH_SCHEMES,
                           progress=lambda done, total: log.info(f"fetched {done}/{total} thumbnails"))
    ok = [i for i, r in enumerate(results) if r.ok]
    failed = [(frame["video_id"].iloc[i], r.error) for i, r in enumerate(results) if not r.ok]
    for video_id, reason in failed:
        log.warning(f"skipped thumbnail of {video_id}: {reason}")
    if urls and not ok:
        raise NothingToEmbedError(f"all {len(urls)} thumbnails of {niche} on {date} failed to fetch "
                                  f"(e.g. {failed[0][1]}); nothing to embed. Check the network or the "
                                  "thumbnail URLs, then re-run the partition.")
    if not urls:
        log.warning(f"no trending videos for {niche} on {date}: writing an empty embeddings file")
    images = [results[i].image for i in ok]
    vectors = embed_images(clip, images, batch_size,
                           progress=lambda done, total: log.info(f"embedded {done}/{total} thumbnails"))
    kept = frame.iloc[ok].reindex(columns=EMBEDDING_COLUMNS).reset_index(drop=True)
    # Titles through the text tower too: the query side scores an upload's title against them.
    title_vectors = embed_texts(clip, kept["title"].fillna("").astype(str).tolist())
    write_embeddings(layout.embeddings(niche, date), kept, vectors, clip.weights.as_dict(), title_vectors)
    reasons = Counter(reason_kind(reason) for _, reason in failed)
    return EmbeddingOutcome(embedded=len(ok), skipped=len(failed), skip_reasons=dict(reasons),
                            skipped_examples=[f"{v}: {r}" for v, r in failed[:10]],
                            weights=clip.weights.as_dict(), dim=clip.dim,
                            seconds=time.perf_counter() - start)


@dataclass
class EmbeddingValidity:
    problems: list[str]
    rows: int
    dim: int


def validate_embeddings(layout: DataLayout, niche: str, date: str, tol: float = 1e-3) -> EmbeddingValidity:
    """Finite values, unit norm within ``tol``, one dimension, no duplicate video ids."""
    frame, vectors, info = read_embeddings(layout.embeddings(niche, date))
    problems = []
    if vectors.shape[1] != int(info.get("dim", vectors.shape[1])):
        problems.append(f"vectors have dimension {vectors.shape[1]}, schema says {info.get('dim')}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} rows contain NaN or inf")
    norms = np.linalg.norm(vectors, axis=1)
    off = finite & (np.abs(norms - 1.0) > tol)
    if off.any():
        problems.append(f"{int(off.sum())} rows are not unit norm (e.g. norm {norms[off][0]:.4f})")
    dupes = frame["video_id"][frame["video_id"].duplicated()].tolist()
    if dupes:
        problems.append(f"{len(dupes)} duplicate video ids, e.g. {dupes[:5]}")
    return EmbeddingValidity(problems, len(frame), int(vectors.shape[1]))


def embedding_weights(layout: DataLayout, niche: str, date: str) -> dict:
    return read_embeddings(layout.embeddings(niche, date))[2]


# --- niche_index --------------------------------------------------------------------------

@dataclass
class IndexOutcome:
    ntotal: int
    dim: int
    file_bytes: int
    build_seconds: float
    dates_used: list[str]
    missing_dates: list[str]
    excluded_dates: dict[str, str]
    manifest: Manifest | None = field(repr=False, default=None)


def reference_window(layout: DataLayout, niche: str, date: str, dates: list[str] | None = None,
                     store=None) -> Window:
    """The rows a niche's index for ``date`` covers (the last WINDOW_DAYS dates by default),
    from the embeddings parquet files, or from the shared store's table when ``store`` is given."""
    dates = dates or window_dates(date, WINDOW_DAYS)
    if store is not None:
        return load_window_from_store(store, niche, dates, newest=date)
    return load_window(layout, niche, dates, newest=date)


@dataclass(frozen=True)
class IndexSettings:
    """How the engine builds a niche index: the memory it may use and the recall it must prove."""
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL


def build_niche_index(layout: DataLayout, niche: str, date: str, dates: list[str] | None = None,
                      log=_default_log, settings: IndexSettings = IndexSettings(), store=None) -> IndexOutcome:
    window = reference_window(layout, niche, date, dates, store)
    log.info(f"building the {niche} index for {date}: {len(window.ids)} unique videos from "
             f"{len(window.dates_used)} dates" + (f" in {store.name}" if store is not None else ""))
    for d, why in window.excluded_dates.items():
        log.warning(f"excluded {d}: {why}")
    if not window.ids:
        log.warning(f"the {niche} window ending {date} holds no vectors: writing an empty index")
    spec = niche_index_spec(window.metadata, window.title_vectors, settings=settings, embedding=window.embedding,
                            source_partitions=window.dates_used,
                            extra={"niche": niche, "snapshot": date, "window_days": WINDOW_DAYS,
                                   "source": store.name if store is not None else "parquet"})
    manifest = build_index_dir(layout.index_dir(niche, date), window.vectors, window.ids, spec)
    log.info(f"{niche}: {manifest.factory} over {manifest.ntotal} vectors "
             f"(budget {settings.memory_budget_bytes:,} bytes)")
    return IndexOutcome(ntotal=manifest.ntotal, dim=manifest.dim,
                        file_bytes=manifest.files[vector_index.INDEX_FILE].bytes,
                        build_seconds=manifest.build_seconds, dates_used=window.dates_used,
                        missing_dates=window.missing_dates, excluded_dates=window.excluded_dates,
                        manifest=manifest)


def niche_index_spec(metadata, title_vectors: np.ndarray | None, *, settings: IndexSettings = IndexSettings(),
                     embedding: dict | None = None, source_partitions=(), extra: dict | None = None,
                     factory: str | None = None, progress=None) -> IndexSpec:
    """How a niche index is built: the percentile reference (plain and weighted by views per hour),
    the title side index, ``video_id`` as the metadata's id column."""
    return IndexSpec(
        factory=factory, metric=INDEX_METRIC, memory_budget_bytes=settings.memory_budget_bytes,
        target_recall=settings.target_recall,
        reference=ReferenceSpec(k=PERCENTILE_K, weights=row_weights(metadata, PERCENTILE_WEIGHT),
                                weighting=PERCENTILE_WEIGHT),
        side_indexes=(title_side_index(title_vectors),), metadata=metadata, id_column=ID_COLUMN,
        embedding=embedding or {}, source_partitions=tuple(source_partitions), extra=extra or {}, progress=progress)


def title_side_index(title_vectors: np.ndarray | None) -> SideIndexSpec:
    """The titles' CLIP text-tower vectors and their leave-one-out top-k reference, built by the
    engine beside the index: ``title_vectors.npy``, ``title_reference_scores.npy`` and the
    manifest's ``titles`` entry (null when the window has no title vectors, e.g. files embedded
    before titles were)."""
    return SideIndexSpec(key=TITLES_KEY, prefix="title", vectors=title_vectors, reference_k=PERCENTILE_K,
                         describe={"embedding": "CLIP text tower"})


def check_niche_index(layout: DataLayout, niche: str, date: str, sample: int = 200,
                      store=None) -> AlignmentReport:
    """Alignment of the built index with an independent re-read of its window (parquet or table)."""
    directory = layout.index_dir(niche, date)
    try:
        window = reference_window(layout, niche, date, store=store)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return AlignmentReport(False, [f"cannot re-read the window: {exc}"])
    return check_alignment(directory, window.ids, window.vectors, sample=sample)


def check_niche_recall(layout: DataLayout, niche: str, date: str, store=None) -> dict:
    """Recall@10 of the built index against exact search over its window, on fresh queries."""
    loaded = vector_index.load_index_dir(layout.index_dir(niche, date))
    window = reference_window(layout, niche, date, store=store)
    return verify_recall(loaded, window.vectors)


def publish_niche_index(layout: DataLayout, niche: str, date: str) -> publishing.PublishResult:
    return publishing.publish(layout.index_dir(niche, date), layout.published, niche, snapshot=date)


# --- index_stats --------------------------------------------------------------------------

def compute_index_stats(layout: DataLayout, niche: str, date: str, k: int = 10,
                        sample: int = 200) -> tuple[dict, bytes]:
    """Stats JSON for one index (written under stats/) and a histogram PNG for the UI."""
    directory = layout.index_dir(niche, date)
    loaded = vector_index.load_index_dir(directory)
    measured = index_stats.measure(loaded, k=k, sample=sample)
    index_path = directory / vector_index.INDEX_FILE
    nn = measured.pop("nn_similarity")
    stats = {
        "niche": niche,
        "date": date,
        "ntotal": loaded.ntotal,
        "dim": int(loaded.index.d),
        "index_type": f"{loaded.manifest.get('factory')} ({type(loaded.index).__name__})",
        "metric": loaded.manifest.get("metric"),
        "file_size_bytes": index_path.stat().st_size,
        "last_modified": datetime.fromtimestamp(index_path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": loaded.manifest.get("build_seconds"),
        "embedding_model": loaded.manifest.get("embedding", {}).get("model"),
        "weights_loaded": loaded.manifest.get("embedding", {}).get("loaded"),
        **measured,
    }
    write_json_atomic(layout.stats(niche, date), stats)
    png = index_stats.histogram_png(nn, f"{niche} {date}: nearest-neighbour similarity")
    return stats, png
