"""Similar tracks over a built index: by id or raw vector, never the query or its exact copies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.music.library import MusicLibrary, UnknownTrack, statistics
from thumblab_dagster.lib.collections.music.vectors import CORE_NAMES, FeatureError, Standardiser, encode
from thumblab_dagster.lib.engine.publish import load_published, publish
from thumblab_dagster.lib.engine.versions import VersionedIndex, add
from thumblab_dagster_tests.collections.music.libraries import build_library, styled_table

GUIDE_KEYS = {"index_name", "index_type", "vector_dimension", "total_vectors", "indexed_vectors", "build_time",
              "faiss_available", "index_loaded"}


@pytest.fixture
def library(tmp_path) -> MusicLibrary:
    """40 tracks of two styles; t040 and t041 are exact copies of t003 (same raw features)."""
    raw, names, _ = styled_table(per_style=20)
    raw = np.vstack([raw, raw[3], raw[3]])
    artists = [f"artist {i % 4}" for i in range(len(raw))]
    return build_library(tmp_path / "lib", raw, names, artists=artists)


def test_similar_excludes_the_query_and_its_exact_duplicates(library):
    found = library.similar("t003", top_n=5)
    ids = [hit["id"] for hit in found]
    assert len(found) == 5 and not {"t003", "t040", "t041"} & set(ids)
    assert [hit["similarity"] for hit in found] == sorted((hit["similarity"] for hit in found), reverse=True)
    assert all(hit["similarity"] < 1 - 1e-6 for hit in found)
    assert set(found[0]) == {"id", "path", "title", "artist", "similarity"} and isinstance(found[0]["similarity"], float)
    assert found[0]["path"] == f"music/{found[0]['id']}.wav" and found[0]["artist"].startswith("artist ")

    kept = [hit["id"] for hit in library.similar("t003", top_n=5, exclude_duplicates=False)]
    assert kept[:2] in (["t040", "t041"], ["t041", "t040"]) and "t003" not in kept   # the query itself never
    assert kept[2:] == ids[:3]


def test_a_raw_vector_is_standardised_like_the_library(library):
    raw, _, _ = styled_table(per_style=20)
    by_vector = library.similar(raw[3], top_n=5)            # e.g. the same audio analysed again, on the fly
    assert [h["id"] for h in by_vector] == [h["id"] for h in library.similar("t003", top_n=5)]
    assert np.allclose(library.transform(raw[3]), library.vector_of("t003"), atol=1e-6)
    assert np.isclose(np.linalg.norm(library.vector_of("t010")), 1.0, atol=1e-6)


def test_many_queries_answer_as_one_each_and_deep_duplicates_are_looked_past(tmp_path):
    raw, names, _ = styled_table(per_style=10)
    raw = np.vstack([raw] + [raw[:1]] * 15)                   # t000 and 15 copies: more than the first page
    library = build_library(tmp_path / "lib", raw, names)
    batch = library.similar_many(["t000", "t005", raw[12]], top_n=4)
    assert [len(hits) for hits in batch] == [4, 4, 4]
    assert batch[1] == library.similar("t005", top_n=4) and batch[2] == library.similar(raw[12], top_n=4)
    assert not {h["id"] for h in batch[0]} & ({"t000"} | {f"t{i:03d}" for i in range(20, 35)})
    assert len(library.similar("t001", top_n=100)) == len(raw) - 1   # everything but itself, when asked for more


def test_queries_the_library_cannot_answer_say_so(library):
    with pytest.raises(UnknownTrack, match=r"track 'nope' is not in library lib \(42 tracks\)"):
        library.similar("nope")
    with pytest.raises(FeatureError, match="have 3 dimensions, the library 8"):
        library.similar([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="top_n must be a whole number >= 1"):
        library.similar("t001", top_n=0)
    with pytest.raises(FeatureError, match="imported from a features table"):
        library.similar({"tempo_bpm": 120, "key": "A", "scale": "minor", "chroma": [0.5] * 12})


def test_an_analysis_is_encoded_the_way_the_library_was_built(tmp_path):
    rng = np.random.default_rng(0)
    analyses = [{"tempo_bpm": float(rng.uniform(60, 180)), "key": "CDEFGAB"[i % 7], "scale": ("major", "minor")[i % 2],
                 "chroma": list(rng.uniform(0, 1, 12)), "tags": None} for i in range(12)]
    raw = np.vstack([encode(a, include_tensorflow=False) for a in analyses])
    library = build_library(tmp_path / "core", raw, CORE_NAMES)
    assert [h["id"] for h in library.similar(analyses[4], top_n=3)] == [h["id"] for h in library.similar("t004", top_n=3)]


def test_statistics_carry_the_guides_keys(library):
    figures = library.statistics()
    assert GUIDE_KEYS <= set(figures)
    assert figures["index_type"] == "IndexFlatIP" and figures["vector_dimension"] == 8
    assert figures["total_vectors"] == figures["indexed_vectors"] == 42 and figures["index_loaded"] is True
    assert figures["build_time"] == library.manifest.built_at and figures["index_name"] == "lib"
    empty = statistics(None, "music")
    assert GUIDE_KEYS <= set(empty) and empty["index_loaded"] is False and empty["total_vectors"] == 0


def test_a_versioned_root_loads_its_current_version_with_added_tracks(tmp_path):
    raw, names, _ = styled_table(per_style=10)
    std = Standardiser.fit(raw[:15], names)
    store = VersionedIndex(tmp_path / "music")
    meta = pd.DataFrame({"file_id": [f"t{i:03d}" for i in range(15)], "artist": ["a"] * 15})
    store.build(std.transform(raw[:15]), meta["file_id"].tolist(), metadata=meta, id_column="file_id",
                embedding=std.embedding(), extra={"music_features": std.to_json()})
    new = pd.DataFrame({"file_id": ["t015"], "artist": ["b"]})
    add(store, std.transform(raw[15:16]), ["t015"], embedding=std.embedding(), metadata=new)
    library = MusicLibrary.load(tmp_path / "music")
    assert library.size == 16 and "t015" in library and library.name == "music"
    assert library.similar(raw[15], top_n=1)[0]["id"] != "t015"           # its own copy is excluded
    assert library.track(library.position_of("t015"))["artist"] == "b"
    with pytest.raises(FileNotFoundError, match="no music library at"):
        MusicLibrary.load(tmp_path / "nothing")


def test_a_published_copy_serves_the_same_answers_with_its_metadata(library, tmp_path):
    publish(library.loaded.directory, tmp_path / "published", "music", "2026-11-30")
    served = MusicLibrary.from_loaded(load_published(tmp_path / "published", "music"), "music")
    assert served.similar("t010", top_n=5) == library.similar("t010", top_n=5)
    assert served.similar("t010", top_n=1)[0]["path"].startswith("music/")     # metadata under its published name
