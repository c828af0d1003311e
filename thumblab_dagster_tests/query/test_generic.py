"""The query layer serves any collection: its names, id key, columns, weightings and noun come from a spec."""

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.spec import IndexSpec, ReferenceSpec
from thumblab_dagster.lib.query import LibrarySpec, ReferenceLibrary
from thumblab_dagster_tests.fakes.libraries import clustered, publish_niche

N = 200
TRACKS = LibrarySpec(names=("main", "archive"), id_key="track_id", columns=("title", "tempo"), noun="library",
                     plural="libraries", missing_hint="index it first")


class TrackRemote:
    name = "track-store"

    def __init__(self):
        self.asked = []

    def similarity_percentile(self, vector, name, k, weight):
        self.asked.append(name)
        return 12.5

    def similar(self, vector, name, k):
        self.asked.append(name)
        return [{"track_id": "remote-7", "similarity": 0.4}]


@pytest.fixture
def tracks(tmp_path):
    vectors = clustered(N, d=32, seed=11)
    ids = [f"trk{i:03d}" for i in range(N)]
    publish_niche(tmp_path / "pub", "main", vectors, ids, snapshot="2026-12-01")
    return ReferenceLibrary(tmp_path / "pub", TRACKS), vectors, ids


def test_similar_reports_the_collections_id_key_and_columns(tracks):
    lib, vectors, ids = tracks
    found = lib.similar(vectors[7], "main", k=3)
    assert found.source == "local" and len(found) == 3
    assert list(found[0]) == ["track_id", "similarity", "title", "tempo"]  # only the spec's columns, in order
    assert found[0]["track_id"] == ids[7] and found[0]["title"] == f"title of {ids[7]}"
    assert found[0]["tempo"] is None  # a declared column the metadata lacks
    score = lib.similarity_percentile(vectors[7], "main")
    assert score.source == "local" and "name" in score.as_dict() and score.as_dict()["name"] == "main"


def test_reasons_use_the_collections_noun(tracks):
    lib, vectors, _ = tracks
    unknown = lib.similarity_percentile(vectors[0], "jazz")
    assert unknown.is_default and unknown.reason.startswith(
        "unknown library 'jazz': known libraries are main, archive; default 50.0 returned")
    assert lib.similar(vectors[0], "jazz").reason.startswith("unknown library 'jazz'")
    missing = lib.similar(vectors[0], "archive")
    assert missing == [] and missing.reason == "no index for library 'archive' (index it first); no similar references"
    lib.similar(vectors[0], "main")
    assert lib.cache_stats()["cached_libraries"] == ["main"]
    assert list(lib.index_info()) == ["main", "archive"]


def test_a_collection_without_weightings_refuses_a_weight_and_loads_none(tracks):
    lib, vectors, _ = tracks
    with pytest.raises(ValueError, match="unknown weight 'views_per_hour': use none"):
        lib.similarity_percentile(vectors[0], "main", weight="views_per_hour")
    assert lib.entry("main").weights == {}  # the index holds a weighted reference; this spec does not use it


def test_the_remote_answers_for_served_names_only(tracks):
    lib, vectors, _ = tracks
    remote = TrackRemote()
    with_remote = ReferenceLibrary(lib.root, TRACKS, remote=remote)
    found = with_remote.similar(vectors[0], "archive", k=1)
    assert found.source == "remote" and found[0]["track_id"] == "remote-7"
    assert found.reason == "no index for library 'archive' (index it first); searched by track-store"
    score = with_remote.similarity_percentile(vectors[0], "archive")
    assert (score.percentile, score.source) == (12.5, "remote")
    assert with_remote.similarity_percentile(vectors[0], "jazz").is_default
    assert remote.asked == ["archive", "archive"]  # an unknown name is nobody's to answer
    assert float(with_remote.similarity_percentile(np.asarray(vectors[0]), "main")) >= 0.0


def test_implicit_position_ids_come_back_as_ints(tmp_path):
    vectors = clustered(N, d=32, seed=12)
    frame = pd.DataFrame({"title": [f"cell {i}" for i in range(N)]})
    build_index_dir(tmp_path / "cells" / "main", vectors, None,
                    IndexSpec(factory="Flat", reference=ReferenceSpec(k=10), metadata=frame))
    lib = ReferenceLibrary(tmp_path / "cells", LibrarySpec(id_key="cell", columns=("title",)))
    found = lib.similar(vectors[42], "main", k=2)
    assert found[0] == {"cell": 42, "similarity": pytest.approx(1.0, abs=1e-5), "title": "cell 42"}
    assert type(found[0]["cell"]) is int  # JSON-ready, not numpy
    assert lib.similarity_percentile(vectors[42], "main").source == "local"
    side = lib.side_percentile(vectors[42], "main")  # this spec declares no side index
    assert side.is_default and "the main index" in side.reason and "without side-index vectors" in side.reason
