"""What the front ends ask a published library: tracks named by id or by file, similar tracks,
playlists from such a seed, and one file's vector (the CLI and the HTTP service share these).

    query = track_query(layout, library, "f3a9...")        # a track id the library holds
    query = track_query(layout, library, "album/song.flac")  # a file in the music folder
    similar_tracks(layout, library, ["id1", "new/song.wav"], top_n=10)
    extract_vector(layout, "new/song.wav", include_tensorflow=True, normalize=True, library=library)

A track is first looked up as an id (nothing on disk is touched); otherwise it must be a path that
``scan.resolve_inside`` accepts (inside the music folder, no ``..``, no symlink leaving it: refused
before anything is opened). A file whose id the library holds is answered from its indexed vector;
any other file is analysed now (Essentia, and MusiCNN when the library has its 50 tags) and encoded
with the library's own standardiser, so it lands in the library's space without joining it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.library import MusicLibrary, UnknownTrack
from thumblab_dagster.lib.collections.music.scan import file_id_for, resolve_inside
from thumblab_dagster.lib.collections.music.vectors import CORE_DIMS, CORE_NAMES, FeatureError, encode, feature_names


@dataclass(frozen=True)
class TrackQuery:
    """A track as a library query: its id, or the raw features of a file analysed now."""

    given: str                          # what the caller wrote
    query: str | np.ndarray             # what ``MusicLibrary.similar`` takes
    track_id: str | None                # the library's id for it (None: a file the library does not hold)
    path: str | None                    # relative to the music folder, where known
    analysed: bool                      # True: analysed on the fly

    def as_dict(self) -> dict:
        return {"query": self.given, "track_id": self.track_id, "path": self.path, "analysed": self.analysed}


def _analyser():
    # Imported on first use: a query by id never pays for Essentia or the MusiCNN network.
    from thumblab_dagster.lib.collections.music import analysis

    return analysis.analyse


def audio_features(library: MusicLibrary) -> bool:
    """True when the library's vectors are audio analyses (not columns of an imported table)."""
    return tuple(library.standardiser.names[-len(CORE_NAMES):]) == CORE_NAMES


def relative_path(layout: MusicLayout, real: Path) -> str:
    """The music folder's name for a path ``resolve_inside`` returned."""
    return real.relative_to(layout.music_dir.resolve()).as_posix()


def track_query(layout: MusicLayout, library: MusicLibrary, track: str, analyse: Callable | None = None) -> TrackQuery:
    """``track`` as a query: an id of the library, else a file inside the music folder.

    Raises ``PathOutsideError`` (a path leaving the folder, never opened), ``UnknownTrack`` (neither an
    id nor a file), ``FeatureError`` (a file, but the library holds imported table columns), and the
    analyser's ``AudioDecodeError``.
    """
    track = str(track)
    if track in library:
        return TrackQuery(track, track, track, library.track(library.position_of(track))["path"], False)
    try:
        real = resolve_inside(layout.music_dir, track)
    except FileNotFoundError:       # no such file, or no music folder at all
        raise UnknownTrack(f"{_shown(track)}: not a track id in library {library.name} ({library.size:,} tracks) "
                           "and no such file in the music folder; give a track id or a path relative to the "
                           "music folder") from None
    relative = relative_path(layout, real)
    file_id = file_id_for(relative)
    if file_id in library:
        return TrackQuery(track, file_id, file_id, relative, False)
    if not audio_features(library):
        raise FeatureError(f"library {library.name} was imported from a features table: a file cannot be "
                           "analysed into its columns; give one of its track ids")
    result = (analyse or _analyser())(real, include_tensorflow=library.standardiser.dims > CORE_DIMS)
    return TrackQuery(track, library.encode(result), None, relative, True)


def similar_tracks(layout: MusicLayout, library: MusicLibrary, tracks: Sequence[str], top_n: int = 10,
                   analyse: Callable | None = None) -> list[tuple[TrackQuery, list[dict]]]:
    """One result list per track (each without the track itself and its exact duplicates), one
    batched search for all of them."""
    queries = [track_query(layout, library, t, analyse) for t in tracks]
    found = library.similar_many([q.query for q in queries], top_n)
    return list(zip(queries, found))


def extract_vector(layout: MusicLayout, user_path: str | Path, include_tensorflow: bool = True,
                   normalize: bool = False, library: MusicLibrary | None = None,
                   analyse: Callable | None = None) -> dict:
    """One file's 67-d (or 17-d) vector; ``normalize``: through ``library``'s stored standardiser
    (standardised, weighted, L2-normalised), as the index holds its tracks."""
    real = resolve_inside(layout.music_dir, user_path)
    if normalize:
        if library is None:
            raise ValueError("normalize needs a library: its stored standardiser is what normalises")
        _check_space(library, include_tensorflow)
    result = (analyse or _analyser())(real, include_tensorflow=include_tensorflow)
    raw = encode(result, include_tensorflow)
    vector = library.transform(raw) if normalize else raw
    return {"file_path": relative_path(layout, real), "vector": [float(v) for v in vector],
            "dimension": int(len(vector)), "feature_names": list(feature_names(include_tensorflow)),
            "include_tensorflow": bool(include_tensorflow), "normalized": bool(normalize),
            "library": library.name if normalize else None, "analysis": result.to_json()}


def _check_space(library: MusicLibrary, include_tensorflow: bool) -> None:
    if not audio_features(library):
        raise FeatureError(f"library {library.name} was imported from a features table: its standardiser "
                           "cannot normalise an audio vector")
    dims = len(feature_names(include_tensorflow))
    if library.dimension != dims:
        raise FeatureError(f"library {library.name} holds {library.dimension}-d vectors but "
                           f"include_tensorflow={str(include_tensorflow).lower()} gives {dims}: use "
                           f"include_tensorflow={str(library.dimension > CORE_DIMS).lower()} to normalise with it")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "...")
