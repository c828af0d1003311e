"""Playlists from a seed track: plain, the guide's "diverse" threshold filter, and MMR with an artist cap.

    tracks, stats = generate_playlist(library, seed, 20)                          # the 20 nearest
    tracks, stats = generate_playlist(library, seed, 20, "threshold", threshold=0.6)
    tracks, stats = generate_playlist(library, seed, 20, "mmr", lam=0.7, max_per_artist=2)

``seed`` is anything ``MusicLibrary.similar`` takes (a track id, a raw vector, an analysis). The
seed is not in the playlist, nor are its exact duplicates.

- ``"none"``: the ``length`` most similar tracks, best first.
- ``"threshold"`` (the guide's "diverse playlist"): over-fetch 3 x ``length`` and keep, best first,
  those with similarity >= ``threshold``. It only drops tracks; it never spreads the playlist out:
  the survivors are still the ones nearest the seed (often one album, one artist).
- ``"mmr"``: maximal marginal relevance over an over-fetched pool (5 x ``length``, grown while the
  rules below leave it short): each next track maximises
  ``lam * sim(seed, t) - (1 - lam) * max(sim(t, s) for s already chosen)``, so ``lam=1`` is the plain
  list and lower values trade closeness to the seed for variety within the playlist.

Artist rules ("not the same artist three times in a row"): in ``"mmr"`` a track never follows one
by the same artist, and with ``max_per_artist=N`` no artist appears more than N times; the other
modes apply both rules when ``max_per_artist`` is given (walking their list best first). Tracks of
unknown artist are never capped. Artists compare case-insensitively. A playlist never holds two
exact duplicates (the same audio twice).

Fewer usable candidates than ``length`` give a shorter playlist, never an error; ``statistics``
then says how many were asked for and why there are fewer. Similarity is the cosine to the seed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from thumblab_dagster.lib.collections.music.library import DUPLICATE_SIMILARITY, MusicLibrary

DIVERSITY = ("none", "threshold", "mmr")
THRESHOLD_OVERFETCH = 3     # the guide's diverse playlist
MMR_POOL = 5                # candidates per wanted track before MMR picks (grown when rules starve it)
POOL_GROWTH = 4
DEFAULT_THRESHOLD = 0.5
DEFAULT_LAMBDA = 0.7


class PlaylistError(ValueError):
    """Playlist settings out of range; one line saying which and what is allowed."""


@dataclass
class ArtistRules:
    """At most ``cap`` tracks per artist (None: no cap) and, with ``no_repeat``, never two in a row."""

    cap: int | None = None
    no_repeat: bool = True
    counts: Counter = field(default_factory=Counter)
    last: str | None = None

    @staticmethod
    def key(artist) -> str | None:
        text = str(artist).strip().casefold() if artist is not None else ""
        return text or None

    def allows(self, artist) -> bool:
        key = self.key(artist)
        if key is None:
            return True          # unknown artist: nothing to compare, never capped
        if self.no_repeat and key == self.last:
            return False
        return self.cap is None or self.counts[key] < self.cap

    def take(self, artist) -> None:
        key = self.key(artist)
        if key is not None:
            self.counts[key] += 1
        self.last = key


def _validated(length, diversity, threshold, lam, max_per_artist) -> tuple[int, float, float]:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise PlaylistError(f"playlist length must be a whole number >= 1, got {length!r}")
    if diversity not in DIVERSITY:
        raise PlaylistError(f"diversity must be one of {', '.join(DIVERSITY)}, got {diversity!r}")
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise PlaylistError(f"threshold is a cosine similarity, between -1 and 1; got {threshold}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise PlaylistError(f"lambda weighs relevance against diversity, between 0 and 1; got {lam}")
    if max_per_artist is not None and (isinstance(max_per_artist, bool) or not isinstance(max_per_artist, (int, np.integer))
                                       or max_per_artist < 1):
        raise PlaylistError(f"max_per_artist must be a whole number >= 1 (or unset), got {max_per_artist!r}")
    return int(length), threshold, lam


def _greedy(library: MusicLibrary, pool, length: int, rules: ArtistRules | None) -> list[tuple[int, float]]:
    """Walk the pool best first, taking what the artist rules allow."""
    chosen = []
    for position, similarity in pool:
        if len(chosen) == length:
            break
        artist = library.artist_of(position)
        if rules is None or rules.allows(artist):
            chosen.append((position, similarity))
            if rules is not None:
                rules.take(artist)
    return chosen


def mmr(library: MusicLibrary, pool, length: int, lam: float, rules: ArtistRules) -> list[tuple[int, float]]:
    """Maximal marginal relevance over ``pool`` ((position, similarity to the seed), best first)."""
    if not pool:
        return []
    positions = [p for p, _ in pool]
    relevance = np.asarray([s for _, s in pool], dtype=np.float64)
    vectors = library.vectors_at(positions).astype(np.float64)
    pairwise = vectors @ vectors.T
    nearest_chosen = np.full(len(pool), -np.inf)     # max similarity to anything chosen so far
    free = np.ones(len(pool), dtype=bool)
    chosen = []
    while len(chosen) < length:
        penalty = np.where(np.isfinite(nearest_chosen), nearest_chosen, 0.0)
        score = np.where(free, lam * relevance - (1 - lam) * penalty, -np.inf)
        pick = None
        for i in np.argsort(-score, kind="stable"):
            if not free[i]:
                break            # sorted: everything after is taken too
            if nearest_chosen[i] >= DUPLICATE_SIMILARITY:
                free[i] = False  # the same audio as a chosen track: never twice in one playlist
                continue
            if rules.allows(library.artist_of(positions[i])):
                pick = int(i)
                break
        if pick is None:
            break
        free[pick] = False
        rules.take(library.artist_of(positions[pick]))
        chosen.append((positions[pick], float(relevance[pick])))
        nearest_chosen = np.maximum(nearest_chosen, pairwise[pick])
    return chosen


def generate_playlist(library: MusicLibrary, seed, length: int, diversity: str = "none", threshold: float | None = None,
                      lam: float = DEFAULT_LAMBDA, max_per_artist: int | None = None) -> tuple[list[dict], dict]:
    """(tracks, statistics): the playlist (``similar``'s dicts, in play order) and its figures."""
    length, threshold, lam = _validated(length, diversity, threshold, lam, max_per_artist)
    capped = max_per_artist is not None
    factor = {"none": MMR_POOL if capped else 1, "threshold": THRESHOLD_OVERFETCH, "mmr": MMR_POOL}[diversity]
    others = library.size - (1 if isinstance(seed, (str, np.str_)) and seed in library else 0)
    pool_size = max(min(factor * length, others), 1)
    while True:
        pool = library.neighbours([seed], pool_size)[0]
        exhausted = len(pool) < pool_size or pool_size >= others   # nothing further to fetch
        if diversity == "threshold":
            pool = [(p, s) for p, s in pool if s >= threshold]
        if diversity == "mmr":
            chosen = mmr(library, pool, length, lam, ArtistRules(max_per_artist, no_repeat=True))
        else:
            chosen = _greedy(library, pool, length, ArtistRules(max_per_artist) if capped else None)
        if len(chosen) == length or exhausted or (diversity == "threshold" and not capped):
            break
        pool_size = min(pool_size * POOL_GROWTH, others)   # the artist rules starved the pool: look further
    tracks = [library.result(p, s) for p, s in chosen]
    return tracks, playlist_statistics(library, chosen, length, diversity, why_short(
        len(chosen), length, others, diversity, threshold, max_per_artist, len(pool)))


def why_short(got: int, wanted: int, others: int, diversity: str, threshold: float, max_per_artist, pool: int) -> str | None:
    if got >= wanted:
        return None
    if others < wanted and got == others:
        return f"the library holds only {others} other track(s)"
    if diversity == "threshold" and pool < wanted:
        return f"only {pool} of the {THRESHOLD_OVERFETCH * wanted} nearest tracks have similarity >= {threshold}"
    cap = f"at most {max_per_artist} per artist, " if max_per_artist is not None else ""
    return f"the artist rules ({cap}never the same artist twice in a row) or duplicates of the seed left no more tracks"


def playlist_statistics(library: MusicLibrary, chosen: list[tuple[int, float]], wanted: int, diversity: str,
                        short: str | None = None) -> dict:
    """The guide's average/min/max/range of similarity to the seed, plus how varied the playlist is."""
    similarities = [s for _, s in chosen]
    artists = Counter(key for key in (ArtistRules.key(library.artist_of(p)) for p, _ in chosen) if key is not None)
    stats = {"average_similarity": float(np.mean(similarities)) if chosen else None,
             "min_similarity": min(similarities) if chosen else None,
             "max_similarity": max(similarities) if chosen else None,
             "similarity_range": (max(similarities) - min(similarities)) if chosen else None,
             "length": len(chosen), "requested_length": wanted, "complete": len(chosen) >= wanted,
             "diversity": diversity, "mean_pairwise_similarity": mean_pairwise(library, [p for p, _ in chosen]),
             "distinct_artists": len(artists), "max_tracks_per_artist": max(artists.values(), default=0)}
    if short:
        stats["note"] = f"{len(chosen)} of {wanted} tracks: {short}"
    return stats


def mean_pairwise(library: MusicLibrary, positions: list[int]) -> float | None:
    """Mean cosine between every two tracks of a playlist (lower: more varied); None under two tracks."""
    if len(positions) < 2:
        return None
    vectors = library.vectors_at(positions).astype(np.float64)
    pairs = vectors @ vectors.T
    upper = pairs[np.triu_indices(len(positions), k=1)]
    value = float(upper.mean())
    return value if math.isfinite(value) else None
