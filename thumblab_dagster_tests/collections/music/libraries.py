"""Small synthetic music libraries built by the real engine (Flat, exact) into a test's temp dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.music.library import MusicLibrary, build_music_index
from thumblab_dagster.lib.collections.music.vectors import Standardiser


def build_library(directory: Path, raw: np.ndarray, names, *, ids=None, artists=None, weights=None,
                  standardiser: Standardiser | None = None) -> MusicLibrary:
    """Index ``raw`` rows (ids ``t000``...; artists optional) and load the library back from disk."""
    raw = np.asarray(raw, dtype=np.float64)
    ids = list(ids) if ids is not None else [f"t{i:03d}" for i in range(len(raw))]
    metadata = pd.DataFrame({"file_id": ids, "path": [f"music/{i}.wav" for i in ids], "title": [f"Song {i}" for i in ids],
                             "artist": list(artists) if artists is not None else [None] * len(ids),
                             "album": [None] * len(ids)})
    build_music_index(directory, raw, ids, names, metadata=metadata, id_column="file_id", weights=weights,
                      standardiser=standardiser, spec=None)
    return MusicLibrary.load(directory)


def raw_standardiser(names) -> Standardiser:
    """Mean 0, std 1: raw features, only L2-normalised (the cosine of the unscaled numbers)."""
    return Standardiser(np.zeros(len(names)), np.ones(len(names)), tuple(names))


def styled_table(per_style: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Two styles planted in six small-scale columns (0..1) beside tempo in BPM and loudness in dB,
    which vary independently of style and dwarf the style columns in raw units."""
    rng = np.random.default_rng(seed)
    style = np.repeat([0, 1], per_style)
    n = len(style)
    timbre = np.where(style[:, None] == 0, 0.35, 0.65) + rng.normal(0, 0.04, (n, 6))
    tempo = rng.uniform(70, 180, (n, 1))
    loudness = rng.uniform(-30, -4, (n, 1))
    names = [f"timbre_{i}" for i in range(6)] + ["tempo", "loudness"]
    return np.hstack([timbre, tempo, loudness]), names, style
