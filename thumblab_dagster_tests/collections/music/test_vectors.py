"""The 67-d encoding and the standardiser: tempo octaves, keys on the circle of fifths, scale-free columns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thumblab_dagster.lib.collections.music import vectors
from thumblab_dagster.lib.collections.music.vectors import (
    CORE_DIMS,
    CORE_NAMES,
    TAG_DIMS,
    FeatureError,
    Standardiser,
    encode,
    encode_many,
    key_position,
    tempo_phase,
)
from thumblab_dagster_tests.collections.music.libraries import build_library, raw_standardiser, styled_table


def analysis_dict(tempo=120.0, key="A", scale="minor", chroma=None, tags=None, seed=0) -> dict:
    """The fields of ``analysis.Analysis.to_json()`` that the encoding reads."""
    rng = np.random.default_rng(seed)
    chroma = chroma if chroma is not None else tuple(rng.uniform(0, 1, 12))
    return {"duration_seconds": 6.0, "tempo_bpm": tempo, "tempo_confidence": 3.0, "key": key, "scale": scale,
            "key_strength": 0.8, "chroma": list(chroma), "dominant_chroma": int(np.argmax(chroma)),
            "tags": None if tags is False else list(tags if tags is not None else rng.uniform(0, 1, TAG_DIMS)),
            "versions": {"essentia": "test"}}


def distance(a, b) -> float:
    return math.dist(a, b)


# --- the encoding ------------------------------------------------------------------------------------

def test_tempo_octaves_are_one_point_and_nearby_tempos_stay_near():
    assert np.allclose(tempo_phase(60), tempo_phase(120)) and np.allclose(tempo_phase(120), tempo_phase(240))
    assert distance(tempo_phase(118), tempo_phase(122)) < 0.35 < distance(tempo_phase(120), tempo_phase(140))
    assert distance(tempo_phase(124), tempo_phase(248)) < 1e-9       # an octave-confused detection
    assert distance(tempo_phase(120), tempo_phase(170)) > 1.0        # half an octave apart is far
    assert tempo_phase(0) == (0.0, 0.0) and tempo_phase(float("nan")) == (0.0, 0.0) and tempo_phase(None) == (0.0, 0.0)


def test_keys_sit_on_the_circle_of_fifths_with_minor_at_its_relative_major():
    assert np.allclose(key_position("A", "minor"), key_position("C", "major"))     # one key signature
    assert np.allclose(key_position("Bb", "major"), key_position("A#", "major"))   # flats and sharps alike
    c, g, c_sharp = key_position("C", "major"), key_position("G", "major"), key_position("C#", "major")
    assert distance(c, g) < distance(c, c_sharp)                                    # a fifth is a neighbour
    assert math.isclose(distance(key_position("F#", "major"), key_position("C#", "major")), distance(c, g))  # closes
    with pytest.raises(FeatureError, match="not a pitch class"):
        key_position("H", "major")
    with pytest.raises(FeatureError, match="neither 'major' nor 'minor'"):
        key_position("C", "dorian")


def test_encode_gives_67_or_the_17_core_dims_from_a_dict_or_an_analysis():
    data = analysis_dict(tempo=120, key="A", scale="minor")
    full, core = encode(data), encode(data, include_tensorflow=False)
    assert full.dtype == np.float32 and full.shape == (TAG_DIMS + CORE_DIMS,) and core.shape == (CORE_DIMS,)
    assert np.array_equal(full[TAG_DIMS:], core) and np.allclose(full[:TAG_DIMS], data["tags"])
    named = dict(zip(CORE_NAMES, core))
    assert named["scale:major"] == -1.0 and np.isclose(named["key:cos"], 1.0)      # A minor -> C, angle 0
    assert np.allclose([named[f"chroma:{p}"] for p in vectors.PITCH_CLASSES], data["chroma"])

    class HasToJson:                      # Analysis objects are read through their to_json()
        def to_json(self):
            return data

    assert np.array_equal(encode(HasToJson()), full)
    arrays = {**data, "chroma": np.asarray(data["chroma"]), "tags": np.asarray(data["tags"], dtype=np.float32)}
    assert np.allclose(encode(arrays), full)
    assert encode_many([data, data]).shape == (2, 67) and encode_many([], include_tensorflow=False).shape == (0, 17)


def test_encode_refuses_what_it_cannot_encode():
    with pytest.raises(FeatureError, match="no MusiCNN tags: analyse with include_tensorflow=True"):
        encode(analysis_dict(tags=False))
    assert encode(analysis_dict(tags=False), include_tensorflow=False).shape == (17,)
    with pytest.raises(FeatureError, match="chroma has 11 values, expected 12"):
        encode(analysis_dict(chroma=[0.5] * 11))
    with pytest.raises(FeatureError, match="tags has 3 values"):
        encode(analysis_dict(tags=[0.1, 0.2, 0.3]))


def test_feature_names_name_every_dimension_in_the_models_tag_order():
    from thumblab_dagster.lib.collections.music.analysis import MSD_TAGS

    names = vectors.FEATURE_NAMES
    assert len(names) == 67 == len(set(names)) and names[-17:] == CORE_NAMES
    assert names[:50] == tuple(f"tags:{t}" for t in MSD_TAGS) and vectors.feature_names(False) == CORE_NAMES
    assert [vectors.group_of(n) for n in names].count("tags") == 50


# --- the standardiser ---------------------------------------------------------------------------------

def test_standardiser_rows_are_unit_length_and_constant_columns_never_divide_by_zero():
    rng = np.random.default_rng(1)
    matrix = np.hstack([rng.normal(100, 30, (50, 1)), np.full((50, 1), 7.0), rng.normal(0, 1, (50, 3))])
    std = Standardiser.fit(matrix, ["tempo", "constant", "a", "b", "c"])
    assert std.std[1] == 1.0 and np.isclose(std.mean[1], 7.0)
    rows = std.transform(matrix)
    assert rows.dtype == np.float32 and np.all(np.isfinite(rows)) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    assert std.transform(matrix[0]).shape == (5,)                          # one vector in, one vector out
    assert np.array_equal(std.transform(std.mean), np.zeros(5, np.float32))  # the mean itself has no direction


def test_standardiser_round_trips_through_the_manifest_json():
    rng = np.random.default_rng(2)
    matrix = rng.normal(0, 1, (40, 4)) * [1, 10, 100, 1000]
    std = Standardiser.fit(matrix, ["tags:a", "tags:b", "tempo:cos", "tempo:sin"], weights={"tempo": 0.5})
    back = Standardiser.from_json(json.loads(json.dumps(std.to_json())))
    assert back.names == std.names and back.weights == {"tempo": 0.5} and back.identity() == std.identity()
    assert np.array_equal(back.mean, std.mean) and np.array_equal(back.std, std.std)
    assert np.array_equal(back.transform(matrix), std.transform(matrix))
    stored = std.to_json()
    assert stored["dims"] == 4 and stored["groups"] == {"tags": 2, "tempo": 2}
    with pytest.raises(FeatureError, match="lacks std"):
        Standardiser.from_json({"names": ["a"], "mean": [0.0]})
    with pytest.raises(FeatureError, match="one entry per dimension"):
        Standardiser.from_json({**stored, "mean": stored["mean"][:3]})


def test_group_weights_scale_a_group_and_zero_removes_it():
    rng = np.random.default_rng(3)
    matrix = rng.normal(0, 1, (30, 4))
    names = ["tags:a", "tags:b", "tempo:cos", "tempo:sin"]
    muted = Standardiser.fit(matrix, names, weights={"tempo": 0.0})
    same_tags = matrix[:2].copy()
    same_tags[1, :2] = same_tags[0, :2]                    # differ only in tempo
    a, b = muted.transform(same_tags)
    assert np.allclose(a, b)
    plain = Standardiser.fit(matrix, names)
    assert not np.allclose(*plain.transform(same_tags))
    with pytest.raises(FeatureError, match="unknown feature group 'mood': the groups are tags, tempo"):
        Standardiser.fit(matrix, names, weights={"mood": 1.0})
    with pytest.raises(FeatureError, match="finite number >= 0"):
        Standardiser.fit(matrix, names, weights={"tags": -1})


def test_standardiser_refuses_other_dimensions_and_non_finite_values():
    std = Standardiser.fit(np.random.default_rng(4).normal(0, 1, (10, 3)), ["a", "b", "c"])
    with pytest.raises(FeatureError, match="have 2 dimensions, the library 3"):
        std.transform([1.0, 2.0])
    with pytest.raises(FeatureError, match="NaN or infinite"):
        std.transform([1.0, float("nan"), 2.0])
    with pytest.raises(FeatureError, match="no tracks"):
        Standardiser.fit(np.empty((0, 3)), ["a", "b", "c"])


# --- what standardisation is for ----------------------------------------------------------------------

def within_style(library, style: np.ndarray, k: int = 5) -> float:
    hits = library.similar_many(library.ids, top_n=k)
    same = [style[int(h["id"][1:])] == style[i] for i, found in enumerate(hits) for h in found]
    return float(np.mean(same))


def test_standardisation_stops_tempo_in_bpm_dominating_similar_tracks(tmp_path):
    raw, names, style = styled_table(per_style=20)
    standardised = build_library(tmp_path / "standardised", raw, names)
    unscaled = build_library(tmp_path / "raw", raw, names, standardiser=raw_standardiser(names))
    assert within_style(standardised, style) == 1.0
    assert within_style(unscaled, style) < 0.8       # BPM and dB decide the neighbours, not the style


def test_encoded_analyses_find_octave_confused_tracks_of_their_style(tmp_path):
    """Style A: 120 BPM, half detected at 60 (an octave error), A minor / C major, tags high on the
    first half; style B: 87 BPM, F# major, tags high on the second half."""
    rng = np.random.default_rng(5)
    tags_a = np.r_[np.full(25, 0.7), np.full(25, 0.1)]
    analyses, style = [], []
    for i in range(12):
        a = i % 2 == 0
        tempo = (60.0 if i % 4 == 0 else 120.0) if a else 87.0
        key, scale = (("A", "minor") if i % 3 else ("C", "major")) if a else ("F#", "major")
        tags = (tags_a if a else tags_a[::-1]) + rng.normal(0, 0.05, 50)
        analyses.append(analysis_dict(tempo + rng.normal(0, 0.5), key, scale, tags=tags, seed=i))
        style.append(0 if a else 1)
    names = [*(f"tags:{i}" for i in range(TAG_DIMS)), *CORE_NAMES]
    library = build_library(tmp_path / "lib", encode_many(analyses), names)
    assert within_style(library, np.asarray(style), k=3) == 1.0
    assert library.statistics()["vector_dimension"] == 67
