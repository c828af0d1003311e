"""The shared store as the reference library's remote fallback, and the store chosen from settings.

``SupabaseRemote`` answers ``similar`` / ``similarity_percentile`` with ``match_ref_thumbnails``
when a niche's local index is missing. Its percentile ranks the upload's top-k mean against
``ref_thumbnails_reference_scores`` (leave-one-out top-k means of a fixed sample of the niche),
fetched once per niche and kept for ``reference_ttl_s``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from thumblab_dagster.lib.embed.clip import weights_label
from thumblab_dagster.lib.query.ranking import percentile_of, without_self
from thumblab_dagster.lib.query.results import EmbeddingMismatchError
from thumblab_dagster.lib.settings import load_settings
from thumblab_dagster.lib.stores.supabase import ReferenceStore

REFERENCE_SAMPLE = 500


@dataclass(frozen=True)
class SupabaseSettings:
    """Where the shared store is: a direct database URL (preferred) and/or the REST gateway."""

    url: str | None = None
    key: str | None = field(default=None, repr=False)      # secrets: never shown
    db_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ=None, settings=None) -> SupabaseSettings:
        """SUPABASE_URL, SUPABASE_KEY and SUPABASE_DB_URL, read through ``lib/settings.py`` (or given loaded)."""
        settings = load_settings(environ) if settings is None else settings
        return cls(settings.supabase_url, settings.supabase_key, settings.supabase_db_url)

    @property
    def configured(self) -> bool:
        return bool(self.db_url or (self.url and self.key))

    def problems(self) -> list[str]:
        if (self.url is None) != (self.key is None):
            return ["set both SUPABASE_URL and SUPABASE_KEY (or neither)"]
        return []

    def store(self) -> ReferenceStore:
        """psycopg over SUPABASE_DB_URL when set (bulk upserts), else supabase-py over the REST gateway."""
        if self.problems():
            raise ValueError(self.problems()[0])
        if self.db_url:
            from thumblab_dagster.lib.stores.supabase_sql import SqlStore

            return SqlStore(self.db_url)
        if self.url and self.key:
            from thumblab_dagster.lib.stores.supabase_rest import RestStore

            return RestStore(self.url, self.key)
        raise ValueError("Supabase is not configured: set SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY")


class SupabaseRemote:
    """The query side's ``RemoteSearch`` over a ``ReferenceStore``: names are niches, rows carry ``video_id``."""

    def __init__(self, store: ReferenceStore, reference_ttl_s: float = 900.0, sample: int = REFERENCE_SAMPLE):
        self.store, self.reference_ttl_s, self.sample = store, reference_ttl_s, sample
        self.name = store.name
        self._references: dict[tuple[str, int], tuple[float, np.ndarray]] = {}
        self._lock = threading.Lock()

    def check_model(self, niche: str, weights: dict) -> None:
        """Refuse an upload embedded by another model than the table's newest rows (same dim or not)."""
        label = self.store.newest_model(niche)
        if label is not None and label != weights_label(weights):
            raise EmbeddingMismatchError(f"the shared store's {niche} rows were embedded with {label}, the query "
                                         f"embedder is {weights_label(weights)}: load the same model and weights")

    def similar(self, vector: np.ndarray, niche: str, k: int) -> list[dict]:
        return self.store.match(vector, niche, k)

    def _reference(self, niche: str, k: int) -> np.ndarray:
        with self._lock:
            cached = self._references.get((niche, k))
        if cached and time.monotonic() - cached[0] < self.reference_ttl_s:
            return cached[1]
        scores = np.sort(np.asarray(self.store.reference_scores(niche, k, self.sample), dtype=np.float32))
        if not len(scores):
            raise LookupError(f"the shared store holds no {niche} references")
        with self._lock:
            self._references[(niche, k)] = (time.monotonic(), scores)
        return scores

    def reference_count(self, niche: str, k: int) -> int:
        """How many references the percentile ranks against: the store's sample of the niche (cached)."""
        return len(self._reference(niche, k))

    def similarity_percentile(self, vector: np.ndarray, niche: str, k: int, weight: str | None) -> float:
        if weight is not None:
            raise ValueError("the shared store keeps no weighted reference")
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector / np.linalg.norm(vector)
        matches = self.store.match(vector, niche, k + 1)
        sims = [float(m["similarity"]) for m in matches]
        if not sims:
            raise LookupError(f"the shared store holds no {niche} rows")
        # leave-one-out, as the reference was built (and as the local scorer does)
        return percentile_of(float(np.mean(sims[without_self(sims, k)])), self._reference(niche, k))


def remote_from_env(environ=None, settings=None) -> SupabaseRemote | None:
    """The fallback the CLI and the service use when Supabase is configured, else None."""
    supabase = SupabaseSettings.from_env(environ, settings)
    return SupabaseRemote(supabase.store()) if supabase.configured else None
