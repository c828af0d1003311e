"""A music library from audio folder to published index: the steps the Dagster assets call one by one
and ``thumblab music build`` calls in a row (``build_from_folder``), with the same checks.

    scan_folder_into   music_files: new, changed (content hash) and deleted files into the store
    analyse_pending    track_analysis: only new or changed files, in batches; a file that fails to
                       decode is recorded with its reason and skipped
    skip_reason        the published library came from this very analysed set, built the same way
    build_index        music_index: 67-d (or 17-d) vectors, standardised, L2-normalised, the engine's index
    check_alignment    the blocking check: the index's ids are the analysed files and each file's analysis,
                       encoded again, finds its own id first
    publish_library    ``<publish_dir>/<library>/`` as one set, then the store's id map follows it
    add_track          one new file analysed and appended to the published index without retraining
    import_table       a library from a table of features another tool computed (no audio, no database)

Every function takes the layout, the store and ``MusicSettings`` it needs: no Dagster here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.music.features_table import read_features
from thumblab_dagster.lib.collections.music.layout import DEFAULT_LIBRARY, MusicLayout, check_library_name
from thumblab_dagster.lib.collections.music.library import MusicLibrary, build_music_index
from thumblab_dagster.lib.collections.music.library import statistics as index_figures
from thumblab_dagster.lib.collections.music.scan import (
    ScanDiff,
    file_id_for,
    resolve_inside,
    scan_folder,
)
from thumblab_dagster.lib.collections.music.store import FileRow, MusicStore, database_url
from thumblab_dagster.lib.collections.music.vectors import MANIFEST_FIELD, encode_many, feature_names
from thumblab_dagster.lib.engine import stats as index_stats
from thumblab_dagster.lib.engine.files import FILE_MODE, write_json_atomic
from thumblab_dagster.lib.engine.index_dir import load_index_dir, read_manifest
from thumblab_dagster.lib.engine.manifest import IndexIntegrityError, Manifest
from thumblab_dagster.lib.engine.progress import Progress, report
from thumblab_dagster.lib.engine.publish import DirectoryLayout, PublishResult, load_published, publish, snapshot_of
from thumblab_dagster.lib.engine.spec import DEFAULT_MEMORY_BUDGET, IndexSpec
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, verify_recall
from thumblab_dagster.lib.engine.validate import MIN_SELF_COSINE, AlignmentReport
from thumblab_dagster.lib.engine.validate import check_alignment as engine_alignment
from thumblab_dagster.lib.engine.versions import append_rows

log = logging.getLogger(__name__)

PUBLISHED_LAYOUT = DirectoryLayout()
ANALYSED_SET = "analysed_set"          # manifest field: what the index was built from (skip when unchanged)
BUILD_SETTINGS = "build_settings"
SOURCE = "source"                      # manifest field: "audio" (the folder) or "table" (an imported file)
ID_COLUMN = "file_id"
METADATA_COLUMNS = ("file_id", "path", "title", "artist", "album", "duration_seconds", "tempo_bpm", "key", "scale")
PROGRESS_STEP = 0.05                   # an event-log line at least every 5% of files analysed


@dataclass(frozen=True)
class MusicSettings:
    """How a library is analysed and built (``THUMBLAB_MUSIC_*``, the index engine's budget and recall)."""

    include_tensorflow: bool = True        # the 50 MusiCNN tags (67-d); False: Essentia's 17 only
    weights: dict = field(default_factory=dict)   # feature-group weights, e.g. {"tempo": 0.5}
    batch_size: int = 16
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL

    @classmethod
    def from_settings(cls, settings, **overrides) -> MusicSettings:
        """From ``load_settings()``'s values; ``overrides`` (None ignored) win."""
        values = {"include_tensorflow": settings.music_features == "musicnn", "weights": parse_weights(settings.music_weights),
                  "batch_size": settings.music_batch, "memory_budget_bytes": settings.index_memory_mb * 1024 * 1024,
                  "target_recall": settings.index_target_recall}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def build_settings(self) -> dict:
        return {"include_tensorflow": bool(self.include_tensorflow), "weights": dict(sorted(self.weights.items())),
                "memory_budget_bytes": int(self.memory_budget_bytes), "target_recall": float(self.target_recall)}


def parse_weights(text: str | None) -> dict[str, float]:
    """``"tags=1,tempo=0.5"`` -> {"tags": 1.0, "tempo": 0.5}; one-line ValueError otherwise."""
    weights = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"feature weight {part!r}: write group=number, e.g. tags=1,tempo=0.5") from None
    return weights


def open_store(layout: MusicLayout, db_url: str | None) -> MusicStore:
    """The music database (``db_url``, else the embedded one under the data root), schema in place."""
    store = MusicStore(database_url(db_url, layout.root))
    store.create_schema()
    return store


# --- music_files ----------------------------------------------------------------------------

def scan_folder_into(store: MusicStore, layout: MusicLayout) -> ScanDiff:
    """Scan the music folder and record it: new and changed files upserted, missing ones marked deleted."""
    if not layout.music_dir.is_dir():
        raise FileNotFoundError(f"music folder {layout.music_dir} does not exist: create it and put audio files "
                                "(wav, flac, mp3, ogg) in it, or set THUMBLAB_MUSIC_DIR")
    changes = store.apply_scan(scan_folder(layout.music_dir))
    log.info("music folder %s: %s", layout.music_dir, ", ".join(f"{v} {k}" for k, v in changes.summary().items()))
    return changes


# --- track_analysis -------------------------------------------------------------------------

@dataclass
class AnalysisRun:
    pending: int = 0
    analysed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    stale: int = 0                  # the file changed while it was analysed: analysed again next time
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"pending": self.pending, "analysed": self.analysed, "failed": len(self.failed),
                "stale": self.stale, "seconds": round(self.seconds, 3)}


def _analyser():
    # Imported on first use: Essentia and the MusiCNN network are only paid for when audio is analysed.
    from thumblab_dagster.lib.collections.music import analysis

    return analysis


def analyse_pending(store: MusicStore, layout: MusicLayout, settings: MusicSettings,
                    progress: Progress | None = None,
                    analyse: Callable | None = None) -> AnalysisRun:
    """Analyse the files the store says are pending, ``settings.batch_size`` at a time, recording each result."""
    analysis = _analyser()
    analyse = analyse or analysis.analyse
    pending = store.pending_analysis(settings.include_tensorflow)
    run, start, next_report = AnalysisRun(pending=len(pending)), time.perf_counter(), PROGRESS_STEP
    report(log, progress, "analyse", f"analysing {len(pending)} new or changed file(s) "
                                     f"({'Essentia + MusiCNN' if settings.include_tensorflow else 'Essentia'})")
    for batch_start in range(0, len(pending), max(1, settings.batch_size)):
        for row in pending[batch_start:batch_start + settings.batch_size]:
            _analyse_one(store, layout, row, settings.include_tensorflow, analyse, analysis, run)
        done = min(batch_start + settings.batch_size, len(pending))
        if done / len(pending) >= next_report or done == len(pending):
            report(log, progress, "analyse", f"analysed {done}/{len(pending)} files ({100 * done / len(pending):.0f}%), "
                                             f"{len(run.failed)} failed")
            next_report = (int(done / len(pending) / PROGRESS_STEP) + 1) * PROGRESS_STEP
    run.seconds = time.perf_counter() - start
    return run


def _analyse_one(store: MusicStore, layout: MusicLayout, row: FileRow, include_tensorflow: bool, analyse,
                 analysis, run: AnalysisRun) -> None:
    path = layout.music_dir / row.path
    try:
        result = analyse(path, include_tensorflow=include_tensorflow)
    except (analysis.AudioDecodeError, OSError) as exc:    # the file's fault: recorded, never the batch's
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if store.record_failure(row.file_id, row.content_hash, reason):
            run.failed.append((row.path, reason))
            log.warning("%s: %s", row.path, reason)
        else:
            run.stale += 1
        return
    if store.record_analysis(row.file_id, row.content_hash, result.to_json(), include_tensorflow, result.versions):
        run.analysed += 1
    else:
        run.stale += 1


# --- music_index ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysedSet:
    """The present, analysed files a build would index, with their raw feature vectors."""

    rows: list[FileRow]
    analyses: list[dict]
    raw: np.ndarray
    names: tuple[str, ...]
    fingerprint: str

    @property
    def ids(self) -> list[str]:
        return [row.file_id for row in self.rows]


def analysed_set(store: MusicStore, settings: MusicSettings) -> AnalysedSet:
    pairs = store.analysed(settings.include_tensorflow)
    rows, analyses = [r for r, _ in pairs], [a for _, a in pairs]
    names = feature_names(settings.include_tensorflow)
    raw = encode_many(analyses, settings.include_tensorflow) if analyses else np.empty((0, len(names)), np.float32)
    digest = hashlib.sha256(json.dumps(
        {"files": [[r.file_id, r.content_hash, r.path, r.title, r.artist, r.album] for r in rows],
         "analyses": analyses, "settings": settings.build_settings()}, sort_keys=True, default=str).encode())
    return AnalysedSet(rows, analyses, raw, names, digest.hexdigest())


def _metadata(chosen: AnalysedSet) -> pd.DataFrame:
    return pd.DataFrame([{"file_id": r.file_id, "path": r.path, "title": r.title, "artist": r.artist,
                          "album": r.album, "duration_seconds": a.get("duration_seconds", r.duration_seconds),
                          "tempo_bpm": a.get("tempo_bpm"), "key": a.get("key"), "scale": a.get("scale")}
                         for r, a in zip(chosen.rows, chosen.analyses)], columns=list(METADATA_COLUMNS))


def published_manifest(layout: MusicLayout, library: str) -> Manifest | None:
    try:
        return read_manifest(layout.library(library))
    except (FileNotFoundError, IndexIntegrityError, NotADirectoryError):
        return None


def skip_reason(layout: MusicLayout, store: MusicStore, library: str, settings: MusicSettings,
                force_rebuild: bool = False) -> str | None:
    """Why the index need not be built (the published library is this analysed set, built the same way)."""
    if force_rebuild:
        return None
    published = published_manifest(layout, library)
    if published is None or published.get(ANALYSED_SET) is None:
        return None
    current = analysed_set(store, settings)
    if published.get(ANALYSED_SET) != current.fingerprint:
        return None
    return (f"library {library} is unchanged: the published index holds the same {len(current.rows)} analysed "
            f"file(s) built with the same settings; nothing rebuilt (force_rebuild to build anyway)")


def build_index(layout: MusicLayout, store: MusicStore, library: str, settings: MusicSettings,
                progress: Progress | None = None) -> Manifest:
    """The library's index directory from every present, analysed file (deleted ones leave here)."""
    chosen = analysed_set(store, settings)
    if not chosen.rows:
        raise ValueError(f"library {library}: no analysed files to index: put audio in {layout.music_dir} and "
                         "run the scan and analysis first (thumblab music scan)")
    report(log, progress, "vectors", f"library {library}: {len(chosen.rows)} analysed file(s), "
                                     f"{chosen.raw.shape[1]}-d raw features, standardised")
    spec = IndexSpec(memory_budget_bytes=settings.memory_budget_bytes, target_recall=settings.target_recall,
                     source_partitions=[library], progress=progress,
                     extra={ANALYSED_SET: chosen.fingerprint, BUILD_SETTINGS: settings.build_settings(),
                            SOURCE: "audio", "library": library})
    manifest, _ = build_music_index(layout.index_dir(check_library_name(library)), chosen.raw, chosen.ids,
                                    chosen.names, metadata=_metadata(chosen), id_column=ID_COLUMN,
                                    weights=settings.weights, spec=spec)
    return manifest


def check_alignment(layout: MusicLayout, store: MusicStore, library: str, settings: MusicSettings,
                    sample: int = 200) -> AlignmentReport:
    """The blocking check: the index against the store's analysed files, each re-encoded with the
    index's own standardiser (ids equal, every sampled analysis finds its own id first)."""
    directory = layout.index_dir(library)
    try:
        built = MusicLibrary.load(directory, library)
    except (FileNotFoundError, IndexIntegrityError, ValueError) as exc:
        return AlignmentReport(False, [f"library {library}: {exc}"])
    chosen = analysed_set(store, settings)
    expected = built.standardiser.transform(chosen.raw) if chosen.rows else np.empty((0, built.dimension), np.float32)
    return engine_alignment(directory, chosen.ids, expected, sample=sample, min_cosine=MIN_SELF_COSINE)


def check_recall(layout: MusicLayout, library: str) -> dict:
    directory = layout.index_dir(library)
    loaded = load_index_dir(directory, verify=False)   # id_map_alignment verified the checksums
    return verify_recall(loaded, _stored_rows(loaded))


def _stored_rows(loaded) -> np.ndarray:
    """Every row's vector as the index holds it (exact indices: the vectors; others: their stored copy)."""
    if loaded.searcher.stored is not None:
        return np.asarray(loaded.searcher.stored)
    return loaded.index.reconstruct_n(0, loaded.ntotal)


def publish_library(layout: MusicLayout, store: MusicStore | None, library: str,
                    mode: int = FILE_MODE) -> PublishResult:
    """Publish the index directory as ``<publish_dir>/<library>/``; the store's id map follows it."""
    directory = layout.index_dir(library)
    manifest = read_manifest(directory)
    result = publish(directory, layout.published, library, snapshot_of(manifest), mode=mode, layout=PUBLISHED_LAYOUT)
    if result.published and store is not None:
        loaded = load_index_dir(directory, verify=False)
        store.replace_id_map(library, [str(i) for i in loaded.ids.tolist()])
    return result


def library_stats(layout: MusicLayout, store: MusicStore | None, library: str) -> tuple[dict, bytes]:
    """Stats (written under music_libraries/stats/) with the guide's coverage, and a neighbour-similarity histogram."""
    directory = layout.index_dir(library)
    loaded = load_index_dir(directory, verify=False)
    measured = index_stats.measure(loaded)
    nn = measured.pop("nn_similarity")
    stats = {**statistics(layout, store, library, MusicLibrary.from_loaded(loaded, library)), **measured}
    write_json_atomic(layout.stats(library), stats)
    return stats, index_stats.histogram_png(nn, f"{library}: nearest-neighbour similarity of tracks")


def statistics(layout: MusicLayout, store: MusicStore | None, library: str,
               loaded: MusicLibrary | None = None) -> dict:
    """The guide's statistics: the index's figures and the store's file counts (coverage = indexed / analysed)."""
    if loaded is None:
        try:
            loaded = load_library(layout, library)
        except (FileNotFoundError, IndexIntegrityError, ValueError):
            loaded = None
    figures = index_figures(loaded, library)
    counts = store.counts() if store is not None and (loaded is None or loaded.manifest.get(SOURCE) != "table") \
        else {"total_files": figures["total_vectors"], "analysed_files": figures["total_vectors"]}
    indexed = figures["indexed_vectors"]
    analysed = counts["analysed_files"]
    return {**figures, "total_files": counts["total_files"], "analyzed_files": analysed, "indexed_files": indexed,
            "index_coverage": round(indexed / analysed, 4) if analysed else 0.0,
            **{k: v for k, v in counts.items() if k not in ("total_files", "analysed_files")}}


def load_library(layout: MusicLayout, library: str = DEFAULT_LIBRARY) -> MusicLibrary:
    """The published library, verified (what the service and the CLI query)."""
    try:
        loaded = load_published(layout.published, check_library_name(library), layout=PUBLISHED_LAYOUT)
    except FileNotFoundError:
        raise FileNotFoundError(f"no music library {library!r} is published under {layout.published}: build it "
                                "(thumblab music build) or import a features table (thumblab music import)") from None
    return MusicLibrary.from_loaded(loaded, library)


# --- add_track ------------------------------------------------------------------------------

def add_track(layout: MusicLayout, store: MusicStore, library: str, user_path: str | Path, settings: MusicSettings,
              mode: int = FILE_MODE) -> dict:
    """Analyse one file in the music folder and append it to the published library without retraining.

    The library's stored standardiser encodes it (the index's space does not move); the appended
    index is checked (``check_alignment``'s engine half on the new directory) before it is published,
    and the store's id map grows by one position.
    """
    path = resolve_inside(layout.music_dir, user_path)
    live = load_library(layout, library)
    if live.manifest.get(SOURCE) == "table":
        raise ValueError(f"library {library} was imported from a features table: add rows by importing again")
    relative = path.relative_to(layout.music_dir.resolve()).as_posix()
    file_id = file_id_for(relative)
    if file_id in live:
        raise ValueError(f"{relative} is already in library {library} (id {file_id}): rebuild to pick up a changed file")
    scanned = [f for f in scan_folder(layout.music_dir) if f.file_id == file_id]
    if not scanned:
        raise FileNotFoundError(f"{relative}: not an audio file the music folder scan sees (wav, flac, mp3, ogg)")
    store.upsert_files(scanned)
    run = analyse_pending(store, layout, settings)   # this file (and anything else pending) analysed now
    row = store.file(file_id)
    if row is None or row.status != "analysed":
        reason = row.error if row is not None and row.error else "not analysed"
        raise ValueError(f"{relative}: cannot be added ({reason})")
    analysis = next(a for r, a in store.analysed(settings.include_tensorflow) if r.file_id == file_id)
    raw = encode_many([analysis], settings.include_tensorflow)
    vector = live.standardiser.transform(raw)
    one = AnalysedSet([row], [analysis], raw, feature_names(settings.include_tensorflow), "")
    target = layout.index_dir(library)
    manifest = append_rows(live.loaded, target, vector, [file_id], embedding=live.manifest.embedding,
                           metadata=_metadata(one),
                           extra={ANALYSED_SET: None, "library": library})
    # the parent's rows as it held them, then the new one: every row must still find its own id
    report_ = engine_alignment(target, list(live.ids) + [file_id], np.vstack([_stored_rows(live.loaded), vector]))
    if not report_.passed:
        raise IndexIntegrityError(f"library {library}: the appended index failed its check, nothing published: "
                                  f"{'; '.join(report_.problems[:3])}")
    published = publish(target, layout.published, library, snapshot_of(manifest), mode=mode, layout=PUBLISHED_LAYOUT)
    if published.published:
        store.append_id_map(library, [file_id])
    return {"file_id": file_id, "path": relative, "position": manifest.ntotal - 1, "total_vectors": manifest.ntotal,
            "published": published.published, "reason": published.reason, "analysed_now": run.analysed}


# --- import_table ---------------------------------------------------------------------------

def import_table(layout: MusicLayout, table: str | Path, id_column: str, library: str,
                 exclude_columns: Sequence[str] = (), weights: dict | None = None,
                 settings: MusicSettings | None = None, mode: int = FILE_MODE) -> dict:
    """A library from a features table: read, standardise, build, check, publish (no audio, no database)."""
    settings = settings or MusicSettings()
    check_library_name(library)
    features = read_features(table, id_column, exclude_columns)
    target = layout.index_dir(library)
    spec = IndexSpec(memory_budget_bytes=settings.memory_budget_bytes, target_recall=settings.target_recall,
                     source_partitions=[library],
                     extra={SOURCE: "table", "table": str(Path(table).name), "library": library})
    manifest, standardiser = build_music_index(target, features.matrix, features.ids, features.names,
                                               metadata=features.metadata, id_column=features.metadata.columns[0],
                                               weights=weights, spec=spec)
    report_ = engine_alignment(target, features.ids, standardiser.transform(features.matrix))
    if not report_.passed:
        raise IndexIntegrityError(f"library {library}: the imported index failed its check, nothing published: "
                                  f"{'; '.join(report_.problems[:3])}")
    published = publish_library(layout, None, library, mode)
    return {"library": library, "rows": manifest.ntotal, "dimensions": manifest.dim,
            "features": list(features.names), "factory": manifest.factory, "published": published.published,
            "reason": published.reason, "directory": str(layout.library(library)),
            MANIFEST_FIELD: {"weights": standardiser.weights}}


# --- everything in a row (the CLI) ------------------------------------------------------------

class AlignmentFailed(RuntimeError):
    """The blocking check failed: nothing was published."""

    def __init__(self, library: str, report_: AlignmentReport):
        super().__init__(f"library {library} failed id_map_alignment, nothing published: "
                         f"{'; '.join(report_.problems[:3])}")
        self.report = report_


def build_from_folder(layout: MusicLayout, store: MusicStore, settings: MusicSettings, *,
                      library: str = DEFAULT_LIBRARY, force_rebuild: bool = False, mode: int = FILE_MODE,
                      progress: Progress | None = None) -> dict:
    """Scan, analyse, build, check, publish, as the assets run. Raises ``AlignmentFailed`` (nothing published)."""
    changes = scan_folder_into(store, layout)
    run = analyse_pending(store, layout, settings, progress)
    result = {"library": library, "scan": changes.summary(), "analysis": run.as_dict(),
              "failures": [{"path": p, "reason": r} for p, r in run.failed]}
    skipped = skip_reason(layout, store, library, settings, force_rebuild)
    if skipped:
        log.info(skipped)
        return {**result, "skipped": skipped, "published": False}
    manifest = build_index(layout, store, library, settings, progress)
    alignment = check_alignment(layout, store, library, settings)
    if not alignment.passed:
        raise AlignmentFailed(library, alignment)
    recall = check_recall(layout, library)
    published = publish_library(layout, store, library, mode)
    return {**result, "skipped": None, "factory": manifest.factory, "dimensions": manifest.dim,
            "indexed": manifest.ntotal, "recall": recall, "published": published.published,
            "reason": published.reason, "directory": str(layout.library(library))}
