"""The music endpoints, in the playlist guide's paths and fields (issue 14), over the published music
libraries (``<publish_dir>/<library>/``) and the music database:

    POST /api/faiss/build-index?include_tensorflow=&force_rebuild=     scan, analyse, build, check, publish
    GET  /api/faiss/statistics                                         the guide's figures (coverage, ...)
    GET  /api/faiss/similar-tracks?query_path=&top_n=                  a track id or a file in the music folder
    POST /api/faiss/generate-playlist?seed_track=&playlist_length=     plus diversity, diversity_threshold,
                                                                       lambda, max_per_artist
    POST /api/faiss/extract-vector?file_path=&include_tensorflow=&normalize=

Each takes ``library`` (default ``music``). A path must resolve inside the music folder
(``scan.resolve_inside``): ``..``, an absolute path elsewhere or a symlink leaving the folder is a 403
and nothing is opened. Errors are one line and never repeat what was sent: an unknown library or track
is a 404, a number out of range a 422 in the house's format, audio that cannot be decoded a 422, a build
already running a 409, the database out of reach a 503 (its URL is a secret: never in an answer or a log).

Libraries are loaded once per published version (a new publish is picked up on the next request).
Builds run in the request's thread, one at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from thumblab_dagster.lib.collections.music import pipeline
from thumblab_dagster.lib.collections.music.layout import DEFAULT_LIBRARY, MusicLayout, check_library_name
from thumblab_dagster.lib.collections.music.library import MusicLibrary, UnknownTrack
from thumblab_dagster.lib.collections.music.playlists import DEFAULT_LAMBDA, generate_playlist
from thumblab_dagster.lib.collections.music.queries import TrackQuery, extract_vector, similar_tracks, track_query
from thumblab_dagster.lib.collections.music.scan import PathOutsideError
from thumblab_dagster.lib.collections.music.store import MusicStore, MusicStoreError
from thumblab_dagster.lib.collections.music.vectors import FeatureError
from thumblab_dagster.lib.engine.files import FILE_MODE
from thumblab_dagster.lib.engine.manifest import IndexIntegrityError
from thumblab_dagster.lib.engine.publish import published_directory
from thumblab_dagster.lib.settings import load_settings
from thumblab_dagster.service.guard import text

log = logging.getLogger(__name__)

MAX_TOP_N = 1000
MAX_PLAYLIST = 1000
SIMILAR_OPERATION = "music_similar"
PLAYLIST_OPERATION = "music_playlist"

LibraryName = text(min_length=1, max_length=64)
UserPath = text(min_length=1, max_length=4096)
LIBRARY = Query(DEFAULT_LIBRARY, description="The library: the audio pipeline's (music) or an imported one.")


@dataclass(frozen=True)
class MusicServiceSettings:
    """Where the music endpoints read and build: the layout, the database (a secret) and how to build."""

    layout: MusicLayout
    db_url: str | None = field(default=None, repr=False)     # may hold a password: never logged or returned
    build: pipeline.MusicSettings = field(default_factory=pipeline.MusicSettings)
    publish_mode: int = FILE_MODE

    @classmethod
    def from_settings(cls, settings, publish_dir: str | os.PathLike | None = None) -> MusicServiceSettings:
        """From ``load_settings()``'s values; ``publish_dir`` (the service's ``--root``) wins."""
        layout = MusicLayout.at(settings.data_root, publish_dir or settings.publish_dir, settings.music_dir)
        return cls(layout, settings.music_db_url, pipeline.MusicSettings.from_settings(settings),
                   int(settings.publish_mode, 8))

    @classmethod
    def from_env(cls, environ=None, publish_dir: str | os.PathLike | None = None) -> MusicServiceSettings:
        return cls.from_settings(load_settings(environ), publish_dir)


# --- the wire format (this is also the OpenAPI schema) -------------------------------------

class Track(BaseModel):
    id: str = Field(description="The track's id (a file id, or the id column of an imported table).")
    path: str | None = Field(default=None, description="Relative to the music folder (null for imported rows).")
    title: str | None = None
    artist: str | None = None
    similarity: float = Field(description="Cosine similarity with the query (the standardised vectors).")


class QueryTrack(BaseModel):
    query: str = Field(description="The track as asked.")
    track_id: str | None = Field(description="Its id in the library (null: a file the library does not hold).")
    path: str | None = None
    analysed: bool = Field(description="True when the file was analysed for this request.")


class SimilarTracks(BaseModel):
    success: bool = True
    library: str
    query: QueryTrack
    top_n: int
    count: int
    similar_tracks: list[Track] = Field(description="Best first, without the query itself and its exact duplicates.")
    search_ms: float


class PlaylistStatistics(BaseModel):
    model_config = ConfigDict(extra="allow")

    average_similarity: float | None = Field(description="Mean similarity of the playlist's tracks to the seed.")
    min_similarity: float | None
    max_similarity: float | None
    similarity_range: float | None
    length: int
    requested_length: int
    diversity: str
    mean_pairwise_similarity: float | None = Field(description="Mean similarity between the playlist's tracks "
                                                   "(lower: more varied).")
    distinct_artists: int
    max_tracks_per_artist: int


class Playlist(BaseModel):
    success: bool = True
    library: str
    seed_track: QueryTrack
    playlist_length: int
    playlist: list[Track] = Field(description="In play order.")
    statistics: PlaylistStatistics


class Statistics(BaseModel):
    """The guide's keys (coverage = indexed / analysed files), and the index's own figures."""

    model_config = ConfigDict(extra="allow")

    index_name: str
    index_type: str | None
    vector_dimension: int | None
    total_vectors: int
    indexed_vectors: int
    total_files: int
    analyzed_files: int
    indexed_files: int
    index_coverage: float
    build_time: str | None = Field(description="When the published index was built (ISO 8601).")
    faiss_available: bool
    index_loaded: bool


class BuildResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    success: bool
    message: str
    library: str
    skipped: bool = Field(description="True when the published library is already this analysed set.")
    total_vectors: int
    indexed: int = Field(description="Tracks indexed by this build (0 when skipped).")
    vector_dimension: int | None
    index_type: str | None
    include_tensorflow: bool
    build_time: float = Field(description="Seconds this request took: scan, analysis, build, checks, publish.")
    scan: dict
    analysis: dict
    failures: list[dict] = Field(description="Files that could not be analysed, with the reason.")
    recall: dict | None = None


class ExtractedVector(BaseModel):
    success: bool = True
    file_path: str
    vector: list[float]
    dimension: int = Field(description="67 (50 MusiCNN tags + 17) or 17 (include_tensorflow=false).")
    feature_names: list[str]
    include_tensorflow: bool
    normalized: bool = Field(description="Standardised with the library's stored statistics and L2-normalised.")
    library: str | None
    analysis: dict


# --- answers and refusals ---------------------------------------------------------------------

OUTSIDE = "the path is not inside the music folder: give a path relative to it, without '..' or links leading out"
NO_TRACK = "no such track: not a track id of the library, nor a file in the music folder"
NO_FILE = "no such file in the music folder: give an audio file's path relative to it"
UNKNOWN_LIBRARY = ("unknown library: nothing is published under that name; build it (POST /api/faiss/build-index) or "
                   "import a features table (thumblab music import)")
UNREADABLE_LIBRARY = "the library's published files cannot be read: rebuild it (the service log names the problem)"
NO_DATABASE = "the music database cannot be used: the service log names the problem"
UNDECODABLE = "the file cannot be decoded as audio: re-encode it as wav, flac, mp3 or ogg"
BUSY = "a build of the music library is already running: try again when it has finished"

NOT_INSIDE = {403: {"description": "The path leaves the music folder (.., an absolute path, a symlink): never read."}}
NOT_FOUND = {404: {"description": "Unknown library, or no such track or file."}}
BAD_INPUT = {422: {"description": "A parameter out of range, or audio that cannot be decoded."}}
NO_DB = {503: {"description": "The music database cannot be used."}}


def invalid(name: str, message: str, kind: str) -> RequestValidationError:
    """A 422 in the house's format for a query parameter."""
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": kind}])


def checked_name(library: str) -> str:
    try:
        return check_library_name(library)
    except ValueError:
        raise invalid("library", "is not a library name: 1-64 letters, digits, '.', '_' or '-'", "library") from None


def refusal(exc: Exception) -> HTTPException:
    """A query's failure as its status and one line that never repeats the path or id sent."""
    if isinstance(exc, PathOutsideError):
        return HTTPException(status_code=403, detail=OUTSIDE)
    if isinstance(exc, UnknownTrack):
        return HTTPException(status_code=404, detail=NO_TRACK)
    if isinstance(exc, (FileNotFoundError, LookupError)):
        return HTTPException(status_code=404, detail=NO_FILE)
    if type(exc).__name__ == "AudioDecodeError":    # analysis is imported on first use only
        return HTTPException(status_code=422, detail=UNDECODABLE)
    # FeatureError (e.g. a file asked of an imported table's library) and playlist settings out of range:
    # their lines name the library or the setting, never the path or id
    return HTTPException(status_code=422, detail=str(exc).splitlines()[0])


class Libraries:
    """Published libraries, each loaded once per version (a version directory never changes)."""

    def __init__(self, layout: MusicLayout):
        self.layout = layout
        self._loaded: dict[str, tuple[Path, MusicLibrary]] = {}
        self._lock = threading.Lock()

    def get(self, library: str) -> MusicLibrary:
        directory = published_directory(self.layout.published, library)
        if directory is None:
            raise HTTPException(status_code=404, detail=UNKNOWN_LIBRARY)
        with self._lock:
            cached = self._loaded.get(library)
            if cached is not None and cached[0] == directory:
                return cached[1]
            try:
                loaded = pipeline.load_library(self.layout, library)
            except FileNotFoundError:               # unpublished meanwhile
                raise HTTPException(status_code=404, detail=UNKNOWN_LIBRARY) from None
            except (FeatureError, IndexIntegrityError, ValueError, OSError) as exc:
                log.error("music library %s cannot be loaded: %s", library, exc)
                raise HTTPException(status_code=503, detail=UNREADABLE_LIBRARY) from None
            self._loaded[library] = (Path(loaded.loaded.directory), loaded)
            return loaded


class Database:
    """The music store, opened on first use and shared (SQLAlchemy's pool is thread-safe)."""

    def __init__(self, settings: MusicServiceSettings):
        self._settings = settings
        self._store: MusicStore | None = None
        self._lock = threading.Lock()

    def get(self) -> MusicStore:
        with self._lock:
            if self._store is None:
                try:
                    self._store = pipeline.open_store(self._settings.layout, self._settings.db_url)
                except MusicStoreError as exc:      # its line names the database, never the URL or password
                    raise unavailable(exc) from None
            return self._store


def unavailable(exc: MusicStoreError) -> HTTPException:
    log.error("music database: %s", exc)
    return HTTPException(status_code=503, detail=NO_DATABASE)


def _track(item: dict) -> Track:
    return Track(**{k: item.get(k) for k in Track.model_fields})


def _query(query: TrackQuery) -> QueryTrack:
    return QueryTrack(**query.as_dict())


def music_router(settings: MusicServiceSettings | Callable[[], MusicServiceSettings],
                 on_search: Callable[[str, float], None] | None = None) -> APIRouter:
    """The music endpoints. ``settings`` may be a function, called on the first music request (the
    environment is then read only by a service that is asked about music)."""
    router = APIRouter(tags=["music"])
    state: dict = {}
    build_lock = threading.Lock()
    setup_lock = threading.Lock()

    def configured() -> tuple[MusicServiceSettings, Libraries, Database]:
        with setup_lock:
            if not state:
                given = settings() if callable(settings) else settings
                state.update(settings=given, libraries=Libraries(given.layout), database=Database(given))
        return state["settings"], state["libraries"], state["database"]

    def observe(operation: str, started: float) -> float:
        seconds = time.perf_counter() - started
        if on_search is not None:
            on_search(operation, seconds)
        return seconds

    @router.post("/api/faiss/build-index", response_model=BuildResult, responses={**NO_DB, 409: {
                     "description": "A build is already running, the music folder is missing or nothing is analysed."}},
                 summary="Scan the music folder, analyse new and changed files, build, check and publish the library")
    def build_index(include_tensorflow: bool | None = Query(None, description="The 50 MusiCNN tags (67-d); false: "
                                                            "Essentia's 17. Default: THUMBLAB_MUSIC_FEATURES."),
                    force_rebuild: bool = Query(False, description="Build even when the published library is "
                                                "already this analysed set."),
                    library: LibraryName = LIBRARY) -> BuildResult:
        library = checked_name(library)
        given, libraries, database = configured()
        build = given.build if include_tensorflow is None else replace(given.build, include_tensorflow=include_tensorflow)
        if not build_lock.acquire(blocking=False):
            raise HTTPException(status_code=409, detail=BUSY)
        started = time.perf_counter()
        try:
            result = pipeline.build_from_folder(given.layout, database.get(), build, library=library,
                                                force_rebuild=force_rebuild, mode=given.publish_mode)
        except MusicStoreError as exc:
            raise unavailable(exc) from None
        except pipeline.AlignmentFailed as exc:
            log.error("music build: %s", exc)
            raise HTTPException(status_code=500, detail=str(exc)) from None
        except (FileNotFoundError, ValueError) as exc:   # no music folder, nothing analysed: the line says what to do
            raise HTTPException(status_code=409, detail=str(exc).splitlines()[0]) from None
        finally:
            build_lock.release()
        seconds = time.perf_counter() - started
        skipped = bool(result.get("skipped"))
        figures = pipeline.statistics(given.layout, None, library, libraries.get(library))
        failed = len(result["failures"])
        message = result["skipped"] if skipped else (
            f"library {library}: {result['indexed']} tracks indexed and published"
            + (f"; {failed} file(s) could not be analysed" if failed else ""))
        return BuildResult(success=True, message=message, library=library, skipped=skipped,
                           total_vectors=figures["total_vectors"], indexed=0 if skipped else result["indexed"],
                           vector_dimension=figures["vector_dimension"], index_type=figures["index_type"],
                           include_tensorflow=build.include_tensorflow, build_time=round(seconds, 3),
                           scan=result["scan"], analysis=result["analysis"], failures=result["failures"],
                           recall=result.get("recall"), published=bool(result.get("published")))

    @router.get("/api/faiss/statistics", response_model=Statistics, responses={**NO_DB},
                summary="The library's figures: vectors, dimension, index type, files analysed and indexed, coverage")
    def statistics(library: LibraryName = LIBRARY) -> Statistics:
        library = checked_name(library)
        given, libraries, database = configured()
        try:
            loaded = libraries.get(library)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            loaded = None                      # not built yet: the files say how far the analysis got
        try:
            # an imported table's library has no files in the database
            store = None if loaded is not None and loaded.manifest.get(pipeline.SOURCE) == "table" else database.get()
            return Statistics(**pipeline.statistics(given.layout, store, library, loaded))
        except MusicStoreError as exc:
            raise unavailable(exc) from None

    @router.get("/api/faiss/similar-tracks", response_model=SimilarTracks,
                responses={**NOT_INSIDE, **NOT_FOUND, **BAD_INPUT},
                summary="Tracks similar to a track of the library, or to a file in the music folder (analysed now)")
    def similar(query_path: UserPath = Query(description="A track id, or a path relative to the music folder."),
                top_n: int = Query(10, ge=1, le=MAX_TOP_N, description="How many similar tracks."),
                library: LibraryName = LIBRARY) -> SimilarTracks:
        library = checked_name(library)
        given, libraries, _ = configured()
        loaded = libraries.get(library)
        try:
            started = time.perf_counter()
            [(query, found)] = similar_tracks(given.layout, loaded, [query_path], top_n)
        except (ValueError, LookupError, FileNotFoundError) as exc:
            raise refusal(exc) from None
        seconds = observe(SIMILAR_OPERATION, started)
        return SimilarTracks(library=library, query=_query(query), top_n=top_n, count=len(found),
                             similar_tracks=[_track(t) for t in found], search_ms=round(seconds * 1000, 3))

    @router.post("/api/faiss/generate-playlist", response_model=Playlist,
                 responses={**NOT_INSIDE, **NOT_FOUND, **BAD_INPUT},
                 summary="A playlist from a seed track: the nearest, the guide's threshold filter, or MMR with "
                         "an artist cap")
    def playlist(seed_track: UserPath = Query(description="A track id, or a path relative to the music folder."),
                 playlist_length: int = Query(20, ge=1, le=MAX_PLAYLIST, description="Tracks in the playlist."),
                 diversity: Literal["none", "threshold", "mmr"] = Query(
                     "none", description="none: the nearest; threshold: over-fetch 3x and keep those >= "
                                         "diversity_threshold; mmr: relevance against variety (lambda)."),
                 diversity_threshold: float | None = Query(None, ge=-1, le=1, allow_inf_nan=False,
                                                           description="threshold: the least similarity kept (0.5)."),
                 lam: float = Query(DEFAULT_LAMBDA, alias="lambda", ge=0, le=1, allow_inf_nan=False,
                                    description="mmr: 1 = only closeness to the seed, lower = more variety."),
                 max_per_artist: int | None = Query(None, ge=1, le=MAX_PLAYLIST, description="At most this many "
                                                    "tracks per artist (and never one artist twice in a row)."),
                 library: LibraryName = LIBRARY) -> Playlist:
        library = checked_name(library)
        given, libraries, _ = configured()
        loaded = libraries.get(library)
        try:
            seed = track_query(given.layout, loaded, seed_track)
            started = time.perf_counter()
            tracks, stats = generate_playlist(loaded, seed.query, playlist_length, diversity,
                                              threshold=diversity_threshold, lam=lam, max_per_artist=max_per_artist)
        except (ValueError, LookupError, FileNotFoundError) as exc:
            raise refusal(exc) from None
        observe(PLAYLIST_OPERATION, started)
        return Playlist(library=library, seed_track=_query(seed), playlist_length=playlist_length,
                        playlist=[_track(t) for t in tracks], statistics=PlaylistStatistics(**stats))

    @router.post("/api/faiss/extract-vector", response_model=ExtractedVector,
                 responses={**NOT_INSIDE, **NOT_FOUND, **BAD_INPUT},
                 summary="A file's 67-d (or 17-d) feature vector, raw or normalised as the library's index holds it")
    def vector(file_path: UserPath = Query(description="A path relative to the music folder."),
               include_tensorflow: bool = Query(True, description="The 50 MusiCNN tags (67-d); false: the 17."),
               normalize: bool = Query(False, description="Standardise with the library's stored statistics and "
                                                          "L2-normalise."),
               library: LibraryName = LIBRARY) -> ExtractedVector:
        library = checked_name(library)
        given, libraries, _ = configured()
        loaded = libraries.get(library) if normalize else None
        try:
            return ExtractedVector(**extract_vector(given.layout, file_path, include_tensorflow, normalize, loaded))
        except (ValueError, LookupError, FileNotFoundError) as exc:
            raise refusal(exc) from None

    return router
