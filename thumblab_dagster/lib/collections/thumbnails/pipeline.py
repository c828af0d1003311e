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
from thumblab_dagster.lib.collections.thumbnails.trending import (
    ChartUnavailableError,
    LiveWindow,
    frame_from_items,
    read_trending,
    recorded_source,
    write_trending,
)
from thumblab_dagster.lib.collections.thumbnails.window import Window, load_window, load_window_from_store, window_dates
from thumblab_dagster.lib.collections.thumbnails.youtube import YouTubeClient
from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images, embed_texts, read_embeddings, write_embeddings
from thumblab_dagster.lib.embed.images import TRANSPORT, FetchResult, fetch_images, reason_kind
from thumblab_dagster.lib.engine import index_dir
from thumblab_dagster.lib.engine import publish as publishing
from thumblab_dagster.lib.engine import stats as index_stats
from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.files import write_json_atomic
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.percentiles import row_weights
from thumblab_dagster.lib.engine.spec import IndexSpec, ReferenceSpec, SideIndexSpec
from thumblab_dagster.lib.engine.tune import verify_recall
from thumblab_dagster.lib.engine.validate import AlignmentReport, check_alignment
from thumblab_dagster.lib.query.snapshot import reference_count
from thumblab_dagster.lib.settings import SETTING

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
    base_url: str | None = SETTING["youtube_base_url"].default  # defaults declared in lib/settings.py
    region_code: str = SETTING["youtube_region_code"].default
    max_results: int = SETTING["youtube_max_results"].default
    timeout_s: float = 15.0
    retries: int = 3
    backoff_factor: float = 1.0
    live_grace_days: int = SETTING["live_grace_days"].default  # late runs: days before today the live chart may fill
    refresh: bool = False  # fetch a live date's chart again although its trending file exists
    today: str | None = None  # the live chart's date; None: today in Australia/Hobart (tests pin it)

    @property
    def kind(self) -> str:
        return "youtube" if self.api_key else "sample"


@dataclass
class TrendingOutcome:
    source: str
    rows: int
    warnings: list[str]
    frame: object
    reused: bool = False  # the existing trending file was kept, nothing was fetched


def collect_trending(layout: DataLayout, niche: str, date: str, source: SourceSettings,
                     log=_default_log) -> TrendingOutcome:
    """The niche's chart for ``date`` written to its trending file, or that file reused.

    YouTube's chart is always today's, so the live API fills only the dates of its live window;
    any other date reuses its file or, without one, raises ``ChartUnavailableError`` before
    anything is fetched or written (see ``reuse_or_collect``).
    """
    path = layout.trending(niche, date)
    existing = recorded_source(path)
    reuse, note = reuse_or_collect(existing, date, source)
    if reuse:
        frame = read_trending(path)
        if note:
            log.warning(note)
        log.info(f"reused the {existing} chart of {niche} for {date} ({len(frame)} videos) from {path}"
                 + ("" if source.kind == "sample" else "; THUMBLAB_TRENDING_REFRESH=on fetches a live date again"))
        return TrendingOutcome(existing, len(frame), [note] if note else [], frame, reused=True)
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
    write_trending(path, frame, source.kind)
    log.info(f"collected {len(frame)} {niche} videos for {date} from the {source.kind} source")
    return TrendingOutcome(source.kind, len(frame), warnings, frame)


def reuse_or_collect(existing: str | None, date: str, source: SourceSettings) -> tuple[bool, str]:
    """Whether to keep the trending file of ``date`` (``existing``: the source it records, None when
    there is none) rather than collect, and a warning to show. Raises ``ChartUnavailableError`` when
    the live API would have to fill a date outside its live window."""
    if source.kind == "sample":  # deterministic, so it may fill any date; but it never replaces a real chart
        if existing == "youtube":
            return True, f"kept the YouTube chart already collected for {date}: the sample source never replaces it"
        return False, ""
    live = LiveWindow.now(source.live_grace_days, source.today)
    if existing is None:
        if date in live:
            return False, ""
        raise ChartUnavailableError(live.refusal(date))
    if existing == "youtube" and not source.refresh:
        return True, ""  # re-running a date never re-fetches it unless asked
    if date in live:
        return False, ""  # asked to refresh, or replacing another source's chart with the real one
    why = "THUMBLAB_TRENDING_REFRESH=on, but " if source.refresh else ""
    return True, (f"{why}{date} is past the live chart (today is {live.today} in Australia/Hobart): "
                  f"kept its trending file from the {existing} source")


# --- thumbnail_embeddings -----------------------------------------------------------------

@dataclass
class FetchSettings:
    max_workers: int = SETTING["fetch_workers"].default
    timeout_s: float = 10.0
    max_bytes: int = SETTING["fetch_max_bytes"].default
    # Transport failures (refused, reset, timed out, 5xx) are retried, 0.5, 1, 2 s apart by default.
    retries: int = 3
    backoff_factor: float = 0.5
    max_failed_share: float = SETTING["fetch_max_failed_share"].default  # of transport failures, after retries


@dataclass
class EmbeddingOutcome:
    embedded: int
    skipped: int
    skip_reasons: dict[str, int]
    skipped_examples: list[str]
    weights: dict
    dim: int
    seconds: float
    fetch_failures_by_kind: dict[str, int] = field(default_factory=dict)  # "transport: ConnectionError" -> count


class NothingToEmbedError(RuntimeError):
    """Every thumbnail failed for its own reason (404, not an image...): re-running will not help."""


class TransportFailuresError(RuntimeError):
    """Too many thumbnails failed in transport: the network or the CDN is down, re-run later."""

    def __init__(self, message: str, failures_by_kind: dict[str, int]):
        super().__init__(message)
        self.failures_by_kind = failures_by_kind


EMBEDDING_COLUMNS = ["video_id", "niche", "title", "channel_title", "thumbnail_url", "published_at",
                     "view_count", "views_per_hour", "collected_at"]


def embed_thumbnails(layout: DataLayout, niche: str, date: str, clip: LoadedClip,
                     fetch: FetchSettings, batch_size: int = 32, log=_default_log) -> EmbeddingOutcome:
    """Fetch and embed the partition's thumbnails; broken ones are skipped and counted.

    A broken thumbnail (content failure: 404, not an image, too big) is skipped. Transport failures
    (refused, reset, timed out, 5xx) are retried; when more than ``fetch.max_failed_share`` of the
    thumbnails still fail so, ``TransportFailuresError`` is raised and nothing is written.
    """
    start = time.perf_counter()
    frame = read_trending(layout.trending(niche, date))
    urls = frame["thumbnail_url"].tolist()
    log.info(f"fetching {len(urls)} thumbnails ({fetch.max_workers} threads)")
    results = fetch_images(urls, max_workers=fetch.max_workers, timeout_s=fetch.timeout_s,
                           max_bytes=fetch.max_bytes, retries=fetch.retries, backoff_factor=fetch.backoff_factor,
                           schemes=sample_source.FETCH_SCHEMES,
                           progress=lambda done, total: log.info(f"fetched {done}/{total} thumbnails"))
    ok = [i for i, r in enumerate(results) if r.ok]
    failed = [(frame["video_id"].iloc[i], r) for i, r in enumerate(results) if not r.ok]
    for video_id, result in failed:
        log.warning(f"skipped thumbnail of {video_id} ({result.kind}): {result.error}")
    by_kind = dict(Counter(f"{r.kind}: {r.label}" for _, r in failed))
    transport = [r for _, r in failed if r.kind == TRANSPORT]
    if len(transport) > fetch.max_failed_share * len(urls):
        raise TransportFailuresError(transport_failure_message(niche, date, len(urls), transport, fetch), by_kind)
    if urls and not ok:
        raise NothingToEmbedError(f"all {len(urls)} thumbnails of {niche} on {date} failed to fetch "
                                  f"(e.g. {failed[0][1].error}); nothing to embed. Check the network or the "
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
    reasons = Counter(reason_kind(r.error) for _, r in failed)
    return EmbeddingOutcome(embedded=len(ok), skipped=len(failed), skip_reasons=dict(reasons),
                            skipped_examples=[f"{v}: {r.error}" for v, r in failed[:10]],
                            weights=clip.weights.as_dict(), dim=clip.dim,
                            seconds=time.perf_counter() - start, fetch_failures_by_kind=by_kind)


def transport_failure_message(niche: str, date: str, total: int, transport: list[FetchResult],
                              fetch: FetchSettings) -> str:
    """One line: how many failed in transport, the share allowed, the first causes, what to do."""
    count = f"all {total}" if len(transport) == total else f"{len(transport)} of {total}"
    causes = Counter(r.error for r in transport).most_common(3)
    return (f"{count} thumbnails of {niche} on {date} failed in transport after {fetch.retries} retries "
            f"(more than {fetch.max_failed_share * 100:g}% allowed), e.g. "
            + "; ".join(f"{reason} ({n} of them)" for reason, n in causes)
            + "; nothing was embedded: check the network and re-run the partition")


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
    memory_budget_bytes: int = SETTING["index_memory_mb"].default * 1024 * 1024
    target_recall: float = SETTING["index_target_recall"].default


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
                        file_bytes=manifest.files[index_dir.INDEX_FILE].bytes,
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
    return check_alignment(directory, window.ids, window.vectors, sample=sample, id_column=ID_COLUMN)


def check_niche_recall(layout: DataLayout, niche: str, date: str, store=None) -> dict:
    """Recall@10 of the built index against exact search over its window, on fresh queries."""
    loaded = index_dir.load_index_dir(layout.index_dir(niche, date))
    window = reference_window(layout, niche, date, store=store)
    return verify_recall(loaded, window.vectors)


def publish_niche_index(layout: DataLayout, niche: str, date: str, mode: int = 0o644) -> publishing.PublishResult:
    """Publish a niche's checked index as one set; published files get ``mode`` (directories: x where r)."""
    return publishing.publish(layout.index_dir(niche, date), layout.published, niche, snapshot=date, mode=mode)


# --- index_stats --------------------------------------------------------------------------

def compute_index_stats(layout: DataLayout, niche: str, date: str, k: int = 10,
                        sample: int = 200) -> tuple[dict, bytes]:
    """Stats JSON for one index (written under stats/) and a histogram PNG for the UI."""
    directory = layout.index_dir(niche, date)
    loaded = index_dir.load_index_dir(directory)
    measured = index_stats.measure(loaded, k=k, sample=sample)
    index_path = directory / index_dir.INDEX_FILE
    nn = measured.pop("nn_similarity")
    stats = {
        "niche": niche,
        "date": date,
        "ntotal": loaded.ntotal,
        "reference_count": reference_count(loaded.manifest),  # what a percentile is ranked against
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
