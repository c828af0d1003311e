"""The query side, for any collection: a collection describes itself with a ``LibrarySpec``.

    spec.py      LibrarySpec: names, id key, metadata columns, weightings, noun, side index
    results.py   ScoreResult, SimilarResult and the errors (IndexUnavailable, EmbeddingMismatchError)
    ranking.py   percentile_of, leave-one-out top-k (shared with remote searches)
    snapshot.py  one verified version of one named index, with everything scoring needs
    fallback.py  RemoteSearch and the local -> remote -> default chain, written once
    library.py   ReferenceLibrary: discovery, the version-keyed cache, queries, stats; Pinned: one version per answer
"""

from thumblab_dagster.lib.query.fallback import RemoteSearch
from thumblab_dagster.lib.query.library import Pinned, ReferenceLibrary
from thumblab_dagster.lib.query.results import (
    EmbeddingMismatchError,
    IndexUnavailable,
    ScoreResult,
    SimilarResult,
    UnknownName,
)
from thumblab_dagster.lib.query.spec import LibrarySpec, ModelIdentity, SideIndex

__all__ = ["EmbeddingMismatchError", "IndexUnavailable", "LibrarySpec", "ModelIdentity", "Pinned", "ReferenceLibrary",
           "RemoteSearch", "ScoreResult", "SideIndex", "SimilarResult", "UnknownName"]
