"""``GET /metrics``: the scoring service's Prometheus metrics, in one registry per app (two apps in one
process, as in the tests, never share or clash).

- ``thumblab_http_requests_total`` and ``thumblab_http_request_duration_seconds``, by ``method``,
  ``route`` and ``status``: every request, counted by ``RequestMetrics`` (pure ASGI, the outermost
  middleware, so a 413 from the body guard and a 500 count too). ``route`` is the route's template
  (``/internal/runs/{run_id}``), never the raw path; a path no route serves is ``unmatched``.
- ``thumblab_search_duration_seconds{operation}``: the library's local searches (its ``on_search`` hook)
  and the geo threshold searches of ``/api/faiss/search`` (``geo_threshold``).
- ``thumblab_index_cache_{hits,misses,loads,refused}_total``, ``thumblab_index_loaded``,
  ``thumblab_index_last_load_seconds`` and ``thumblab_index_serving_info{name,version}``: read from
  ``library.cache_stats()`` when scraped (the library keeps the counts; nothing is copied).
- ``thumblab_fetch_failures_total{kind,reason}``: thumbnails ``/v1/score`` could not fetch, by
  ``FetchError.kind`` (content or transport) and its label with hosts, addresses and types masked.
- ``thumblab_clip_batch_size{tower}``: how many images or texts went into one CLIP forward.

No label value is a secret, a URL, a host or text a caller chose: methods, routes and statuses come
from fixed sets, and fetch reasons are masked and capped at ``MAX_REASONS`` distinct values.
"""

from __future__ import annotations

import re
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

from thumblab_dagster.lib.embed.images import FetchError
from thumblab_dagster.lib.query.library import ReferenceLibrary

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"
OTHER = "other"
MAX_REASONS = 32       # distinct fetch-failure reasons; further ones count as "other"
MAX_REASON_CHARS = 80

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SEARCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# a word that names a host, an address, a URL or a media type: it has one of these inside it
_PARTICULAR = re.compile(r"[./@\[\]]|:(?=.)")


def fetch_reason(label: str) -> str:
    """A fetch failure's label as a label value: the words kept, anything particular masked as ``_``,
    parentheses (hints, exception types) dropped. ``"refused: 10.0.0.5 is a private address (...)"``
    -> ``"refused: _ is a private address"``."""
    words = [("_" if _PARTICULAR.search(word) else word) for word in label.split("(", 1)[0].split()]
    return " ".join(words)[:MAX_REASON_CHARS] or OTHER


class Metrics:
    """The service's metrics and the registry they live in (one per app)."""

    def __init__(self, library: ReferenceLibrary | None = None, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("thumblab_http_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("thumblab_http_request_duration_seconds", "Time to answer an HTTP request.",
                                 ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.searches = Histogram("thumblab_search_duration_seconds", "Time of one local index search.",
                                  ["operation"], buckets=SEARCH_BUCKETS, registry=self.registry)
        self.fetch_failures = Counter("thumblab_fetch_failures", "Thumbnails /v1/score could not fetch or decode.",
                                      ["kind", "reason"], registry=self.registry)
        self.batches = Histogram("thumblab_clip_batch_size", "Images or texts in one CLIP forward.",
                                 ["tower"], buckets=BATCH_BUCKETS, registry=self.registry)
        self._reasons: set[str] = set()
        self._lock = threading.Lock()
        if library is not None:
            self.registry.register(CacheCollector(library))

    # -- what the service tells it

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else OTHER
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def observe_search(self, operation: str, seconds: float) -> None:
        """The library's ``on_search`` hook."""
        self.searches.labels(operation).observe(seconds)

    def fetch_failed(self, error: FetchError) -> None:
        reason = fetch_reason(error.label)
        with self._lock:
            if reason not in self._reasons:
                if len(self._reasons) >= MAX_REASONS:
                    reason = OTHER
                else:
                    self._reasons.add(reason)
        self.fetch_failures.labels(error.kind, reason).inc()

    def observe_batch(self, tower: str, size: int) -> None:
        """One CLIP forward of ``size`` inputs through ``tower`` (``image`` or ``text``)."""
        self.batches.labels(tower).observe(size)

    # -- the scrape

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CacheCollector(Collector):
    """The library's cache counters, read at scrape time."""

    def __init__(self, library: ReferenceLibrary):
        self.library = library

    def describe(self):
        return []  # the names depend on nothing; no need to collect at registration

    def collect(self):
        stats = self.library.cache_stats()
        for counter, help_text in (("hits", "Queries answered from the loaded version."),
                                   ("misses", "Queries that found the index changed on disk and looked again."),
                                   ("loads", "New versions verified and loaded."),
                                   ("refused", "Versions refused (failed verification); the previous one kept serving.")):
            yield CounterMetricFamily(f"thumblab_index_cache_{counter}", help_text, value=stats[counter])
        loaded = next((v for k, v in stats.items() if k.startswith("cached_")), [])
        yield GaugeMetricFamily("thumblab_index_loaded", "Indices loaded in memory.", value=len(loaded))
        if stats.get("last_load_ms") is not None:
            yield GaugeMetricFamily("thumblab_index_last_load_seconds", "Time the last load took.",
                                    value=stats["last_load_ms"] / 1000)
        serving = GaugeMetricFamily("thumblab_index_serving_info", "The version each loaded index serves (always 1).",
                                    labels=["name", "version"])
        for name, version in stats.get("versions", {}).items():
            serving.add_metric([name, version], 1)
        yield serving


class RequestMetrics:
    """Pure ASGI middleware: each HTTP request's method, route template, status and time.

    ``router`` (the app's) names the route of a request answered before routing (the body guard's 413).
    """

    def __init__(self, app, metrics: Metrics, router=None):
        self.app = app
        self.metrics = metrics
        self.router = router

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it starts a response

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe_request(scope.get("method", ""), self._template(scope), status,
                                         time.perf_counter() - started)

    def _template(self, scope) -> str:
        # the router writes the matched route into this scope (for a mount, the mount: "/docs-assets")
        route = scope.get("route")
        if route is None and self.router is not None:  # answered before routing: match it now
            route = next((r for r in self.router.routes if r.matches(scope)[0] is not Match.NONE), None)
        return getattr(route, "path", None) or UNMATCHED
