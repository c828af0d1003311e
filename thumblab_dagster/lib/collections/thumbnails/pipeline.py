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
from thumblab_dagster.lib.engine.build import DEFAULT_MEMORY_BUDGET, build_index_dir, temp_file
from thumblab_dagster.lib.engine.files import write_json_atomic
from thumblab_dagster.lib.engine.percentiles import reference_scores, row_weights
from thumblab_dagster.lib.engine.search import Searcher
from thumblab_dagster.lib.engine.sources import open_source
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, verify_recall
from thumblab_dagster.lib.engine.validate import AlignmentReport, check_alignment

_default_log = logging.getLogger(__name__)

INDEX_METRIC = "inner_product"
PERCENTILE_K = 10  # neighbours averaged for the similarity percentile (reference stored with the index)
PERCENTILE_WEIGHT = "views_per_hour"  # the weighted percentile's weight: log1p of this column
TITLE_VECTORS_FILE = "title_vectors.npy"
TITLE_REFERENCE_FILE = "title_reference_scores.npy"


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
    manifest: dict = field(repr=False, default_factory=dict)


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
    directory = layout.index_dir(niche, date)
    title_files, titles = prepare_titles(directory, window.title_vectors)
    try:
        manifest = build_index_dir(
            directory, window.vectors, window.ids, metric=INDEX_METRIC,
            memory_budget_bytes=settings.memory_budget_bytes, target_recall=settings.target_recall,
            reference_k=PERCENTILE_K, reference_weights=row_weights(window.metadata, PERCENTILE_WEIGHT),
            reference_weighting=PERCENTILE_WEIGHT, extra_files=title_files, metadata=window.metadata,
            embedding=window.embedding, source_partitions=window.dates_used,
            extra={"niche": niche, "snapshot": date, "window_days": WINDOW_DAYS, "titles": titles,
                   "source": store.name if store is not None else "parquet"})
    finally:
        for path in title_files.values():  # moved in on success; left-overs of a failed build
            path.unlink(missing_ok=True)
    log.info(f"{niche}: {manifest['factory']} over {manifest['ntotal']} vectors "
             f"(budget {settings.memory_budget_bytes:,} bytes)")
    return IndexOutcome(ntotal=manifest["ntotal"], dim=manifest["dim"],
                        file_bytes=manifest["files"][vector_index.INDEX_FILE]["bytes"],
                        build_seconds=manifest["build_seconds"], dates_used=window.dates_used,
                        missing_dates=window.missing_dates, excluded_dates=window.excluded_dates,
                        manifest=manifest)


def prepare_titles(directory, title_vectors: np.ndarray | None) -> tuple[dict, dict | None]:
    """Title vectors and their leave-one-out top-k reference, staged beside ``directory``.

    Returns the files for ``build_index_dir(extra_files=)`` and the manifest's ``titles`` entry
    (None when the window has no title vectors, e.g. files embedded before titles were).
    """
    if title_vectors is None or len(title_vectors) < 2:
        return {}, None
    vectors_path, reference_path = temp_file(directory, "titles"), temp_file(directory, "title-reference")
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, title_vectors, allow_pickle=False)
    flat = vector_index.build_index(title_vectors)  # titles are few (<= 90 x 200): exact search
    plain, _ = reference_scores(Searcher([flat]), open_source(title_vectors), k=PERCENTILE_K)
    np.save(reference_path, plain, allow_pickle=False)
    return ({TITLE_VECTORS_FILE: vectors_path, TITLE_REFERENCE_FILE: reference_path},
            {"vectors": TITLE_VECTORS_FILE, "reference": TITLE_REFERENCE_FILE, "k": PERCENTILE_K,
             "rows": int(len(title_vectors)), "embedding": "CLIP text tower"})


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
