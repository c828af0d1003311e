"""Playlists from a seed: plain, the guide's threshold filter, and MMR with an artist cap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from thumblab_dagster.lib.collections.music.playlists import PlaylistError, generate_playlist
from thumblab_dagster_tests.collections.music.libraries import build_library

DIMS = 8


def artist_clusters(artists: int, per_artist: int, seed: int = 0, spread: float = 0.6, noise: float = 0.08):
    """One style: each artist's tracks tight around the artist's own point, the artists around the
    style's centre; and a second style far away. Returns (raw rows, artist names)."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for centre, prefix in ((np.zeros(DIMS), "near"), (np.full(DIMS, 2.5), "far")):
        for a in range(artists):
            point = centre + rng.normal(0, spread, DIMS)
            rows.append(point + rng.normal(0, noise, (per_artist, DIMS)))
            names += [f"{prefix} artist {a}"] * per_artist
    return np.vstack(rows), names


@pytest.fixture
def clustered(tmp_path):
    raw, artists = artist_clusters(artists=6, per_artist=6)
    return build_library(tmp_path / "lib", raw, [f"f{i}" for i in range(DIMS)], artists=artists)


def artists_of(tracks) -> list[str]:
    return [t["artist"] for t in tracks]


def mean_pairwise(library, tracks) -> float:
    vectors = np.vstack([library.vector_of(t["id"]) for t in tracks]).astype(np.float64)
    return float(np.mean([a @ b for a, b in itertools.combinations(vectors, 2)]))


def test_plain_playlist_is_the_nearest_tracks_with_the_guides_statistics(clustered):
    tracks, stats = generate_playlist(clustered, "t000", 8)
    assert [t["id"] for t in tracks] == [t["id"] for t in clustered.similar("t000", top_n=8)]
    sims = [t["similarity"] for t in tracks]
    assert stats["average_similarity"] == pytest.approx(np.mean(sims)) and stats["min_similarity"] == min(sims)
    assert stats["max_similarity"] == max(sims) and stats["similarity_range"] == pytest.approx(max(sims) - min(sims))
    assert stats["length"] == stats["requested_length"] == 8 and stats["complete"] and "note" not in stats
    assert artists_of(tracks)[:5] == ["near artist 0"] * 5      # the seed's own artist fills the top: no variety


def test_mmr_playlist_keeps_the_artist_cap_and_is_more_varied_than_the_plain_one(clustered):
    plain, plain_stats = generate_playlist(clustered, "t000", 10)
    varied, stats = generate_playlist(clustered, "t000", 10, diversity="mmr", lam=0.7, max_per_artist=2)
    artists = artists_of(varied)
    assert len(varied) == 10 and stats["complete"]
    assert all(a != b for a, b in zip(artists, artists[1:]))                 # never the same artist twice in a row
    assert max(artists.count(a) for a in set(artists)) <= 2 == stats["max_tracks_per_artist"]
    assert mean_pairwise(clustered, varied) < mean_pairwise(clustered, plain)
    assert stats["mean_pairwise_similarity"] == pytest.approx(mean_pairwise(clustered, varied), abs=1e-6)
    assert stats["mean_pairwise_similarity"] < plain_stats["mean_pairwise_similarity"]
    assert stats["distinct_artists"] > plain_stats["distinct_artists"]
    assert all(a.startswith("near") for a in artists)                        # variety within the seed's style
    assert "t000" not in {t["id"] for t in varied}


def test_mmr_without_a_cap_still_never_repeats_an_artist_back_to_back(clustered):
    tracks, _ = generate_playlist(clustered, "t007", 12, diversity="mmr", lam=0.9)
    artists = artists_of(tracks)
    assert len(tracks) == 12 and all(a != b for a, b in zip(artists, artists[1:]))


def test_threshold_playlist_holds_only_tracks_above_the_threshold_from_the_3x_overfetch(clustered):
    pool = clustered.similar("t000", top_n=24)
    threshold = pool[12]["similarity"]              # 13 of the 24 pass: more than asked
    tracks, stats = generate_playlist(clustered, "t000", 8, diversity="threshold", threshold=threshold)
    assert [t["id"] for t in tracks] == [t["id"] for t in pool[:8]]
    assert all(t["similarity"] >= threshold for t in tracks) and stats["complete"]

    strict = pool[4]["similarity"]                  # only 5 pass
    tracks, stats = generate_playlist(clustered, "t000", 8, diversity="threshold", threshold=strict)
    assert len(tracks) == 5 and all(t["similarity"] >= strict for t in tracks)
    assert stats["length"] == 5 and stats["requested_length"] == 8 and not stats["complete"]
    assert stats["note"].startswith("5 of 8 tracks: only 5 of the 24 nearest tracks have similarity >=")


def test_a_small_library_gives_a_shorter_playlist_not_an_error(tmp_path):
    raw, artists = artist_clusters(artists=1, per_artist=3)       # 6 tracks in all
    library = build_library(tmp_path / "small", raw, [f"f{i}" for i in range(DIMS)], artists=artists)
    for diversity in ("none", "threshold", "mmr"):
        tracks, stats = generate_playlist(library, "t000", 10, diversity=diversity, threshold=-1.0)
        assert stats["length"] == len(tracks) <= 5 and not stats["complete"] and "10 tracks" in stats["note"]
    tracks, stats = generate_playlist(library, "t000", 10)
    assert len(tracks) == 5 and stats["note"] == "5 of 10 tracks: the library holds only 5 other track(s)"


def test_the_cap_looks_past_a_pool_full_of_one_artist(tmp_path):
    """40 tracks by the seed's artist right beside it, 12 other artists further out: with one track per
    artist the 5x pool holds almost nobody else, so it is grown until the playlist is full."""
    rng = np.random.default_rng(3)
    near = rng.normal(0, 0.05, (41, DIMS))
    others = rng.normal(0, 1.0, (12, DIMS)) + 0.5
    artists = ["solo"] * 41 + [f"guest {i}" for i in range(12)]
    library = build_library(tmp_path / "lib", np.vstack([near, others]), [f"f{i}" for i in range(DIMS)], artists=artists)
    for diversity in ("mmr", "none"):
        tracks, stats = generate_playlist(library, "t000", 8, diversity=diversity, max_per_artist=1)
        assert stats["complete"] and len(set(artists_of(tracks))) == 8


def test_unknown_artists_are_never_capped_and_duplicates_never_play_twice(tmp_path):
    raw, _ = artist_clusters(artists=3, per_artist=4)
    raw = np.vstack([raw, raw[1]])                  # t024 is a copy of t001
    library = build_library(tmp_path / "lib", raw, [f"f{i}" for i in range(DIMS)])   # no artists known
    tracks, stats = generate_playlist(library, "t000", 6, diversity="mmr", lam=1.0, max_per_artist=1)
    ids = [t["id"] for t in tracks]
    assert len(tracks) == 6 and stats["distinct_artists"] == 0
    assert not {"t001", "t024"} <= set(ids)          # the same audio twice would be one song played twice


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"length": 0}, "playlist length must be a whole number >= 1"),
    ({"length": 5, "diversity": "shuffle"}, "diversity must be one of none, threshold, mmr"),
    ({"length": 5, "diversity": "mmr", "lam": 1.5}, "lambda weighs relevance against diversity, between 0 and 1"),
    ({"length": 5, "diversity": "threshold", "threshold": 2}, "threshold is a cosine similarity"),
    ({"length": 5, "max_per_artist": 0}, "max_per_artist must be a whole number >= 1"),
])
def test_settings_out_of_range_are_refused_in_one_line(clustered, kwargs, message):
    with pytest.raises(PlaylistError, match=message):
        generate_playlist(clustered, "t000", **kwargs)
