"""What a query answers, and the ways a local index cannot answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class EmbeddingMismatchError(ValueError):
    """A query vector from another model or of another dimension than the index's."""


class IndexUnavailable(Exception):
    """The local index cannot answer for a name; ``str()`` says why (a fallback reason)."""


class UnknownName(IndexUnavailable):
    """A name the library does not serve: nobody else is asked, the default answers."""


class TransientLoadError(IndexUnavailable):
    """A load that may succeed if tried again (files swapped mid-load, no memory, no file handles)."""


@dataclass
class ScoreResult:
    """A similarity percentile (0..100) and where it came from: ``local``, ``remote`` or ``default``.

    A percentile among a handful of references says little (among 3, every query is 0, 33, 67 or
    100): ``confident`` is False below the spec's ``min_references`` and ``reason`` says how many.
    """

    percentile: float
    source: str
    reason: str
    name: str
    k: int
    weight: str | None = None
    score: float | None = None       # the query's top-k mean similarity (local scores)
    version: str | None = None       # the index version that answered (local scores)
    reference_count: int | None = None  # how many references the percentile was ranked against (None: unknown)
    confident: bool = False          # ranked against at least the spec's minimum of references (never a default)

    @property
    def is_default(self) -> bool:
        return self.source == "default"

    def __float__(self) -> float:
        return float(self.percentile)

    def as_dict(self, name_key: str = "name") -> dict:
        """Fields in order plus ``is_default``; ``name_key`` is what the collection calls a name."""
        return {(name_key if key == "name" else key): value for key, value in asdict(self).items()} | \
            {"is_default": self.is_default}


class SimilarResult(list):
    """The similar references (dicts), best first, plus where they came from."""

    def __init__(self, items=(), *, source: str, reason: str, version: str | None = None):
        super().__init__(items)
        self.source, self.reason, self.version = source, reason, version
