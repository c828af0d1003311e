"""The scoring HTTP service (FastAPI): ``thumblab serve --host 127.0.0.1 --port 8000``.

A thin front end over ``lib/``: the reference library answers, the pipeline's embedder embeds,
untrusted thumbnail URLs go through the SSRF-safe fetcher. A thumbnail that cannot be fetched
is an error on that thumbnail, never a failed request.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseRemote, SupabaseSettings
from thumblab_dagster.lib.collections.thumbnails.scoring import UploadScorer, thumbnail_library
from thumblab_dagster.lib.embed import clip as embedding
from thumblab_dagster.lib.embed.batching import ClipBatchers
from thumblab_dagster.lib.embed.fetch_pool import FetchPool
from thumblab_dagster.lib.embed.images import FetchError
from thumblab_dagster.lib.embed.untrusted_fetch import FetchPolicy, fetch_untrusted_image
from thumblab_dagster.lib.query.library import Pinned
from thumblab_dagster.lib.query.results import EmbeddingMismatchError, IndexUnavailable, ScoreResult
from thumblab_dagster.lib.query.snapshot import Snapshot
from thumblab_dagster.lib.query.spec import NAME_PATTERN
from thumblab_dagster.lib.settings import SETTING, SettingsError, load_settings
from thumblab_dagster.service.docs import serve_offline_docs
from thumblab_dagster.service.geo import geo_router
from thumblab_dagster.service.guard import BodyGuard, ValidationErrors, text, validation_error
from thumblab_dagster.service.metrics import Metrics, RequestMetrics
from thumblab_dagster.service.music import MusicServiceSettings, music_router
from thumblab_dagster.service.ops import operations_router

log = logging.getLogger(__name__)

TOKEN_ENV = SETTING["internal_token"].env
MAX_THUMBNAILS = 10
SIMILAR_K = 5
MAX_TITLE_CHARS = 300  # YouTube's own limit is 100; room for other platforms, not for a payload


@dataclass
class ServiceSettings:
    publish_dir: str
    clip_model: str = SETTING["clip_model"].default
    clip_pretrained: str = SETTING["clip_pretrained"].default
    clip_device: str = SETTING["clip_device"].default
    clip_precision: str = SETTING["clip_precision"].default  # fp32 | bf16 | auto (bf16 kept only if it agrees)
    internal_token: str | None = field(default=None, repr=False)  # a secret: never logged or shown
    min_references: int = SETTING["min_references"].default  # fewer: a percentile is flagged not confident
    max_body_bytes: int = SETTING["max_body_bytes"].default  # a larger request body is a 413, never parsed
    dagster_url: str | None = None  # the Dagster webserver the operations endpoints launch runs on
    batch_window_ms: float = SETTING["batch_window_ms"].default  # concurrent uploads share a CLIP forward
    batch_max: int = SETTING["batch_max"].default
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    supabase: SupabaseSettings = field(default_factory=SupabaseSettings)  # the fallback, when configured
    music: MusicServiceSettings | None = None  # the music endpoints' folders and database; None: the environment's

    @classmethod
    def from_env(cls, environ=None, publish_dir: str | None = None) -> ServiceSettings:
        """Every value through ``lib/settings.py`` (the environment parsed once); a bad one raises a
        one-line ``SettingsError``."""
        settings = load_settings(environ)
        supabase = SupabaseSettings.from_env(settings=settings)
        if supabase.problems():
            raise SettingsError(supabase.problems()[0])
        return cls(publish_dir=publish_dir or str(DataLayout.from_env(settings=settings).published),
                   clip_model=settings.clip_model, clip_pretrained=settings.clip_pretrained,
                   clip_device=settings.clip_device, clip_precision=settings.clip_precision,
                   internal_token=settings.internal_token,
                   fetch=FetchPolicy.from_env(settings=settings), supabase=supabase,
                   min_references=settings.min_references, max_body_bytes=settings.max_body_bytes,
                   dagster_url=settings.dagster_url,
                   batch_window_ms=settings.batch_window_ms, batch_max=settings.batch_max,
                   music=MusicServiceSettings.from_settings(settings, publish_dir))


# --- the wire format (this is also the OpenAPI schema) -------------------------------------

# Every string is a ``text``: a lone surrogate is a 422 naming the field, not a 500 on the way out.
ThumbnailId = text(min_length=1, max_length=200)
Url = text(min_length=1, max_length=2048)
Title = text(max_length=MAX_TITLE_CHARS)
Category = text(max_length=64, pattern=NAME_PATTERN.pattern)

EXAMPLE_THUMBNAIL = "https://i.ytimg.com/vi/dQw4w9WgXcQ/hqdefault.jpg"
EXAMPLE_TITLE = "I built a mechanical keyboard from scratch"


class ThumbnailIn(BaseModel):
    id: ThumbnailId = Field(description="The caller's id for this thumbnail.", examples=["upload-1"])
    url: Url = Field(description="http(s) URL of the image (fetched by the service).", examples=[EXAMPLE_THUMBNAIL])


class ScoreRequest(BaseModel):
    title: Title | None = Field(default=None, examples=[EXAMPLE_TITLE],
                                description=f"The video title, scored with CLIP's text tower (at most "
                                            f"{MAX_TITLE_CHARS} characters).")
    thumbnails: list[ThumbnailIn] = Field(min_length=1, max_length=MAX_THUMBNAILS,
                                          examples=[[{"id": "upload-1", "url": EXAMPLE_THUMBNAIL}]])
    category: Category = Field(default="tech", examples=["tech"],
                               description="The niche to compare with (an unknown niche is scored 50.0, with a reason).")

    model_config = {"json_schema_extra": {"examples": [
        {"title": EXAMPLE_TITLE, "category": "tech",
         "thumbnails": [{"id": "upload-1", "url": EXAMPLE_THUMBNAIL}]}]}}


class Percentile(BaseModel):
    percentile: float = Field(ge=0, le=100, description="Share of the niche's references this is at least as "
                              "similar to its neighbours as.")
    source: Literal["local", "remote", "default"]
    reason: str = Field(description="Which index answered, or why a fallback was used.")
    is_default: bool = Field(description="True when no index could answer and 50.0 was returned.")
    score: float | None = Field(default=None, description="Mean cosine similarity of the top-k neighbours.")
    version: str | None = None
    k: int
    reference_count: int | None = Field(default=None, description="How many references the percentile was ranked "
                                        "against (null when unknown, e.g. the default).")
    confident: bool = Field(description="False when the percentile comes from fewer references than "
                            "THUMBLAB_MIN_REFERENCES (the reason says how many) or is the default.")


class SimilarReference(BaseModel):
    video_id: str
    similarity: float
    title: str | None = None
    thumbnail_url: str | None = None
    views_per_hour: float | None = None


class ThumbnailScore(BaseModel):
    id: str
    ok: bool
    error: str | None = Field(default=None, description="Why this thumbnail could not be scored.")
    similarity: Percentile | None = None
    similar: list[SimilarReference] = []


class ScoreResponse(BaseModel):
    category: str
    version: str | None = Field(default=None, description="The one version of the niche's index every part of "
                                "this answer came from (null when no local index answered).")
    title: Percentile | None = None
    thumbnails: list[ThumbnailScore]


class Health(BaseModel):
    status: Literal["ok"]
    model: dict
    niches: dict[str, dict]


class IndexStats(BaseModel):
    indices: dict[str, dict]
    cache: dict


def _percentile(result: ScoreResult) -> Percentile:
    return Percentile(percentile=result.percentile, source=result.source, reason=result.reason,
                      is_default=result.is_default, score=result.score, version=result.version, k=result.k,
                      reference_count=result.reference_count, confident=result.confident)


def _niche_health(snapshot: Snapshot | None, info: dict) -> dict:
    """A niche's version and size from one place: the loaded snapshot, else its manifest."""
    if snapshot is not None:
        return {"exists": info["exists"], "loaded": True, "version": snapshot.version,
                "num_vectors": snapshot.ntotal}
    return {"exists": info["exists"], "loaded": False, "version": info["version"], "num_vectors": info["num_vectors"]}


# --- the app --------------------------------------------------------------------------------

def create_app(settings: ServiceSettings, *, clip: embedding.LoadedClip | None = None) -> FastAPI:
    """The service over ``settings.publish_dir``; ``clip`` skips loading the model (tests)."""
    remote = SupabaseRemote(settings.supabase.store()) if settings.supabase.configured else None
    library = thumbnail_library(settings.publish_dir, remote=remote, min_references=settings.min_references)
    metrics = Metrics(library)  # this app's own registry: /metrics
    library.on_search = metrics.observe_search
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["clip"] = clip or embedding.load_clip(settings.clip_model, settings.clip_pretrained,
                                                    settings.clip_device, precision=settings.clip_precision)
        # one CLIP forward per tower for all the uploads that arrive within the window (closed at shutdown)
        state["batchers"] = app.state.batchers = ClipBatchers(state["clip"], window_s=settings.batch_window_ms / 1000,
                                                              max_batch=settings.batch_max,
                                                              on_batch=metrics.observe_batch)
        state["scorer"] = UploadScorer(library, state["clip"], batchers=state["batchers"])
        for niche, info in library.index_info().items():  # warm the cache: the first request is not a load
            if info["exists"]:
                try:
                    library.entry(niche)
                except IndexUnavailable as exc:
                    log.error("%s not loaded at start: %s", niche, exc)
        with state["batchers"], FetchPool(settings.fetch.pool_size, settings.fetch.per_request) as pool:
            state["pool"] = pool  # each request holds at most per_request fetches: a slow server delays only it
            yield

    app = FastAPI(title="Thumbnail Lab scoring service", version="1",
                  description="How does a thumbnail compare with what is trending in its niche? Similarity "
                              "percentiles and similar references from the published FAISS indices.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    serve_offline_docs(app)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, router=app.router)  # added last: outermost, a 413 counts too
    bearer = HTTPBearer(auto_error=False, description=f"The token set in {TOKEN_ENV}.")

    @app.get("/health", response_model=Health, summary="Model and indices loaded")
    def health() -> Health:
        weights = state["clip"].weights
        niches = {n: _niche_health(library.serving(n), info) for n, info in library.index_info().items()}
        return Health(status="ok", model={"name": weights.model, "weights": weights.pretrained,
                                          "weights_loaded": weights.loaded, "loaded": True, "dim": state["clip"].dim,
                                          "precision": weights.precision, "precision_note": weights.precision_note},
                      niches=niches)

    def fetch_one(thumb: ThumbnailIn):
        """The decoded image, or the thumbnail's error answer (a failed fetch never fails the request)."""
        try:
            return fetch_untrusted_image(thumb.url, settings.fetch)
        except FetchError as exc:
            log.info("thumbnail %s not scored: %s", thumb.id, exc)
            metrics.fetch_failed(exc)
            return ThumbnailScore(id=thumb.id, ok=False, error=f"could not fetch the thumbnail: {exc}")

    def score_thumbnails(scorer: UploadScorer, thumbs: list[ThumbnailIn], pinned: Pinned) -> list[ThumbnailScore]:
        # Fetch workers only fetch (a worker never waits on CLIP), then all of this request's images
        # join one batch together, then each is searched in the pinned version.
        fetched = state["pool"].map(fetch_one, thumbs)
        vectors = [f if isinstance(f, ThumbnailScore) else scorer.image_vector_soon(f) for f in fetched]
        scores = []
        for thumb, vector in zip(thumbs, vectors, strict=True):
            if isinstance(vector, ThumbnailScore):
                scores.append(vector)
                continue
            result = scorer.score_vector(vector.result(), pinned, similar_k=SIMILAR_K)
            scores.append(ThumbnailScore(id=thumb.id, ok=True, similarity=_percentile(result.percentile),
                                         similar=[SimilarReference(**s) for s in result.similar]))
        return scores

    @app.post("/v1/score", response_model=ScoreResponse, summary="Score thumbnails (and a title) against a niche",
              responses={413: {"description": "The body is over THUMBLAB_MAX_BODY_BYTES."},
                         422: {"model": ValidationErrors, "description": "The body does not match the schema: "
                               "each error's field path and message (never the value sent)."},
                         503: {"description": "The loaded model differs from the one the niche was built with."}})
    def score(request: ScoreRequest) -> ScoreResponse:
        scorer: UploadScorer = state["scorer"]
        pinned = scorer.pin(request.category)  # one version for every part, even if a publish lands meanwhile
        try:
            scorer.check_model(request.category, pinned)
            title_text = request.title.strip() if request.title else ""
            # the title joins other requests' text batch now, while this request's thumbnails are fetched
            title_vector = scorer.title_vector_soon(title_text) if title_text else None
            thumbs = score_thumbnails(scorer, request.thumbnails, pinned)
            title = None
            if title_vector is not None:
                title = _percentile(scorer.score_title(title_text, request.category, pinned, vector=title_vector))
        except EmbeddingMismatchError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        answers = [title, *(t.similarity for t in thumbs)]
        local = any(a is not None and a.source == "local" for a in answers)
        return ScoreResponse(category=request.category, version=pinned.version if local else None, title=title,
                             thumbnails=thumbs)

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not settings.internal_token:
            raise HTTPException(status_code=404, detail=f"disabled: set {TOKEN_ENV} to enable it")
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), settings.internal_token.encode()):
            raise HTTPException(status_code=401, detail="a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/internal/index-stats", response_model=IndexStats, dependencies=[Depends(require_token)],
             summary="Index info and cache statistics (bearer token)",
             responses={401: {"description": "Missing or wrong bearer token."},
                        404: {"description": f"Disabled: {TOKEN_ENV} is not set."}})
    def index_stats() -> IndexStats:
        return IndexStats(indices=library.index_info(), cache=library.cache_stats())

    # refresh-library, rebuild-indices and runs/{run_id}: Dagster runs through its GraphQL API (service/ops.py)
    app.include_router(operations_router(settings.dagster_url, require_token))
    # /api/faiss/search and /api/faiss/viewports: the geo viewports published beside the niches (service/geo.py)
    app.include_router(geo_router(settings.publish_dir, on_search=metrics.observe_search))
    # /api/faiss/build-index, statistics, similar-tracks, generate-playlist, extract-vector (service/music.py);
    # without settings the environment is read on the first music request
    app.include_router(music_router(settings.music or (lambda: MusicServiceSettings.from_env(
        publish_dir=settings.publish_dir)), on_search=metrics.observe_search))

    # Open, like most scrape targets: counts and timings only, no secret, URL or caller input in a label.
    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "The Prometheus text format."}})
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    app.state.library = library
    app.state.metrics = metrics
    return app
