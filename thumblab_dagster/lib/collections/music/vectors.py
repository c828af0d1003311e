"""Track vectors: what an analysis becomes before the engine sees it, and the standardiser.

The 67 dimensions (``include_tensorflow=False`` keeps the last 17):

=========  ====  ==================================================================================
group      dims  encoding
=========  ====  ==================================================================================
tags         50  MusiCNN's MSD tag activations (``analysis.MSD_TAGS`` order), as they come (0..1)
tempo         2  cos, sin of the octave-folded tempo phase ``2 pi frac(log2 bpm)``
key           2  cos, sin of the tonic on the circle of fifths, minor keys as their relative major
scale         1  +1 major, -1 minor
chroma       12  the mean HPCP profile C..B, max-normalised (the dominant chroma is its argmax)
=========  ====  ==================================================================================

Why this and not the raw numbers:

- **Tempo has octave errors.** Beat trackers report half or double the felt tempo (60, 120 and
  240 BPM are one groove heard at different levels), and BPM itself is a large-scale number
  that swamps every inner product. ``frac(log2 bpm)`` is the same for 60, 120 and 240, and
  ``cos/sin`` of it makes the scale a circle: 118 and 122 are close, and so are 125 and 248 (an
  octave-confused 124). A tempo of 0 or non-finite (no beat found) encodes as (0, 0): no
  direction, neutral to every other tempo.
- **Key is circular.** Numbering C..B as 0..11 puts B next to nothing and C far from G, yet keys a
  fifth apart share all but one note. On the circle of fifths (pitch class ``p`` at position
  ``7 p mod 12``) neighbours share six of seven notes, and ``cos/sin`` closes the circle (B next
  to F#/Gb next to C#). A minor shares C major's key signature (the same seven notes), so a
  minor key sits at its relative major (tonic + 3 semitones); ``scale`` keeps them apart.
- **Dominant chroma as one integer** has the same wrap-around problem and says less than the
  profile it is the argmax of: the 12-d profile keeps it (where the peak is) and the harmony
  around it. ``dominant_chroma`` itself is not encoded: it is a function of these 12 numbers.
- Confidence figures (``tempo_confidence``, ``key_strength``) are kept in the store, not in the
  vector: they describe how sure the analyser was, not how the track sounds.

``Standardiser`` then puts every dimension on one scale: per-dimension mean and standard
deviation fitted on the library (a zero-variance column gets std 1, so it never divides by 0),
optional feature-group weights (``{"tags": 1.0, "tempo": 0.5}``: each dimension of a group is
multiplied by its weight, so a group's share of the distance also grows with its size), then
L2 normalisation so the index's inner product is the cosine. It is stored in the manifest under
``music_features`` (``to_json``/``from_json``) and applied to every query vector, so a new file
analysed on the fly lands in the same space as the library. A feature name's group is the part
before ``:`` (``tags:rock`` -> ``tags``); a name without ``:`` (a column of an imported table) is
its own group.

Nothing here imports Essentia: ``encode`` takes an ``analysis.Analysis`` or its ``to_json`` dict.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MANIFEST_FIELD = "music_features"   # the manifest's extra field holding Standardiser.to_json()
TAG_DIMS = 50
CORE_DIMS = 17
GROUPS = ("tags", "tempo", "key", "scale", "chroma")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}
CORE_NAMES = ("tempo:cos", "tempo:sin", "key:cos", "key:sin", "scale:major",
              *(f"chroma:{p}" for p in PITCH_CLASSES))
RELATIVE_MAJOR = 3          # semitones from a minor tonic up to its relative major's
ZERO_STD = 1e-12            # relative to the column's scale: below it a column is constant
ENCODING = "music-67: 50 MSD tags + tempo phase (2) + key on the circle of fifths (2) + scale (1) + chroma (12)"


class FeatureError(ValueError):
    """Features that cannot be encoded or standardised; the message is one line saying what to do."""


def __getattr__(name: str):
    # The tag names live with the model (analysis.MSD_TAGS); importing them only when asked keeps
    # this module (and ``thumblab music import``) free of the analysis stack.
    if name in ("TAG_NAMES", "FEATURE_NAMES"):
        from thumblab_dagster.lib.collections.music.analysis import MSD_TAGS

        tags = tuple(f"tags:{tag}" for tag in MSD_TAGS)
        if len(tags) != TAG_DIMS:
            raise FeatureError(f"analysis.MSD_TAGS has {len(tags)} names, expected {TAG_DIMS}")
        return tags if name == "TAG_NAMES" else (*tags, *CORE_NAMES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def feature_names(include_tensorflow: bool = True) -> tuple[str, ...]:
    """The names of ``encode``'s dimensions: 67 with the tags, the 17 core ones without."""
    return __getattr__("FEATURE_NAMES") if include_tensorflow else CORE_NAMES


def group_of(name: str) -> str:
    """``tags:rock`` -> ``tags``; a plain column name is its own group."""
    return name.split(":", 1)[0]


# --- encoding one analysis -------------------------------------------------------------------------

def _fields(analysis_like) -> Mapping:
    if isinstance(analysis_like, Mapping):
        return analysis_like
    if hasattr(analysis_like, "to_json"):
        return analysis_like.to_json()
    raise FeatureError(f"expected an Analysis or its to_json() dict, got {type(analysis_like).__name__}")


def tempo_phase(bpm) -> tuple[float, float]:
    """(cos, sin) of ``2 pi frac(log2 bpm)``: 60, 120 and 240 BPM are one point; no tempo is (0, 0)."""
    bpm = float(bpm) if bpm is not None else math.nan
    if not math.isfinite(bpm) or bpm <= 0:
        return 0.0, 0.0
    angle = 2 * math.pi * (math.log2(bpm) % 1.0)
    return math.cos(angle), math.sin(angle)


def pitch_class(key: str) -> int:
    """``"A"`` -> 9; sharps and flats alike (``"Bb"`` == ``"A#"``)."""
    name = str(key).strip()
    name = FLATS.get(name, name)
    if name not in PITCH_CLASSES:
        raise FeatureError(f"key {key!r} is not a pitch class name (C, C#/Db, ..., B)")
    return PITCH_CLASSES.index(name)


def key_position(key: str, scale: str) -> tuple[float, float]:
    """(cos, sin) of the key's place on the circle of fifths; a minor key at its relative major."""
    tonic = pitch_class(key)
    if scale_sign(scale) < 0:
        tonic = (tonic + RELATIVE_MAJOR) % 12
    angle = 2 * math.pi * ((7 * tonic) % 12) / 12
    return math.cos(angle), math.sin(angle)


def scale_sign(scale: str) -> float:
    value = str(scale).strip().lower()
    if value not in ("major", "minor"):
        raise FeatureError(f"scale {scale!r} is neither 'major' nor 'minor'")
    return 1.0 if value == "major" else -1.0


def _numbers(values, count: int, what: str) -> list[float]:
    values = [float(v) for v in (() if values is None else values)]
    if len(values) != count:
        raise FeatureError(f"{what} has {len(values)} values, expected {count}")
    if not all(math.isfinite(v) for v in values):
        raise FeatureError(f"{what} holds a non-finite value: re-analyse the file")
    return values


def encode(analysis_like, include_tensorflow: bool = True) -> np.ndarray:
    """One analysis as its raw (unstandardised) float32 vector: 67-d, or 17-d without the tags."""
    fields = _fields(analysis_like)
    core = [*tempo_phase(fields.get("tempo_bpm")),
            *key_position(fields.get("key"), fields.get("scale")),
            scale_sign(fields.get("scale")),
            *_numbers(fields.get("chroma"), 12, "chroma")]
    if not include_tensorflow:
        return np.asarray(core, dtype=np.float32)
    if fields.get("tags") is None:
        raise FeatureError("the analysis has no MusiCNN tags: analyse with include_tensorflow=True, "
                           "or build with include_tensorflow=False (17-d vectors)")
    return np.asarray([*_numbers(fields["tags"], TAG_DIMS, "tags"), *core], dtype=np.float32)


def encode_many(analyses: Iterable, include_tensorflow: bool = True) -> np.ndarray:
    """Rows of ``encode``; an empty input gives a (0, 67) or (0, 17) array."""
    rows = [encode(a, include_tensorflow) for a in analyses]
    dims = TAG_DIMS + CORE_DIMS if include_tensorflow else CORE_DIMS
    return np.vstack(rows) if rows else np.empty((0, dims), dtype=np.float32)


# --- the standardiser ------------------------------------------------------------------------------

def _as_matrix(values, dims: int | None = None, what: str = "features") -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise FeatureError(f"{what} must be one vector or a matrix of rows, got shape {matrix.shape}")
    if dims is not None and matrix.shape[1] != dims:
        raise FeatureError(f"{what} have {matrix.shape[1]} dimensions, the library {dims}: encode them the way the "
                           f"library was built (e.g. the same include_tensorflow, the same table columns)")
    if not np.all(np.isfinite(matrix)):
        raise FeatureError(f"{what} hold NaN or infinite values: fix or drop those rows")
    return matrix


def _checked_weights(weights: Mapping | None, names: Sequence[str]) -> dict[str, float]:
    groups = list(dict.fromkeys(group_of(n) for n in names))
    out = {}
    for group, weight in (weights or {}).items():
        if group not in groups:
            raise FeatureError(f"weight for unknown feature group {group!r}: the groups are {', '.join(groups)}")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise FeatureError(f"weight of group {group!r} must be a finite number >= 0, got {weight}")
        out[str(group)] = weight
    return out


@dataclass
class Standardiser:
    """Per-dimension (x - mean) / std, group weights, L2 normalisation; fitted on the library."""

    mean: np.ndarray
    std: np.ndarray
    names: tuple[str, ...]
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        self.names = tuple(str(n) for n in self.names)
        if not (self.mean.shape == self.std.shape == (len(self.names),)):
            raise FeatureError(f"standardiser with {self.mean.shape} means, {self.std.shape} stds and "
                               f"{len(self.names)} names: they must have one entry per dimension")
        if len(set(self.names)) != len(self.names):
            raise FeatureError("standardiser feature names repeat: each dimension needs its own name")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise FeatureError("standardiser means must be finite and stds finite and > 0")
        self.weights = _checked_weights(self.weights, self.names)

    @property
    def dims(self) -> int:
        return len(self.names)

    @property
    def groups(self) -> dict[str, int]:
        """Group name -> how many dimensions it has, in feature order."""
        counts: dict[str, int] = {}
        for name in self.names:
            counts[group_of(name)] = counts.get(group_of(name), 0) + 1
        return counts

    def scale(self) -> np.ndarray:
        """Each dimension's weight (1 for groups without one)."""
        return np.asarray([self.weights.get(group_of(n), 1.0) for n in self.names], dtype=np.float64)

    @classmethod
    def fit(cls, matrix, names: Sequence[str], weights: Mapping | None = None) -> Standardiser:
        """Mean and std of each column of ``matrix`` (rows: the library's raw vectors)."""
        names = tuple(names)
        matrix = _as_matrix(matrix, len(names), "library features")
        if not len(matrix):
            raise FeatureError("cannot fit a standardiser on no tracks: analyse or import some first")
        mean = matrix.mean(axis=0)
        std = matrix.std(axis=0)
        # A constant column (std 0, or float noise around it) carries no information: dividing
        # by 1 leaves it at (x - mean), which is 0 for every library row.
        constant = ~np.isfinite(std) | (std <= ZERO_STD * np.maximum(1.0, np.abs(mean)))
        return cls(mean, np.where(constant, 1.0, std), names, dict(weights or {}))

    def transform(self, values) -> np.ndarray:
        """Standardised, weighted, L2-normalised float32 rows (a 1-d input gives a 1-d output).

        A row that lands exactly on the library mean stays all zeros (it has no direction).
        """
        single = np.ndim(values) == 1
        rows = (_as_matrix(values, self.dims, "query features") - self.mean) / self.std * self.scale()
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0).astype(np.float32)
        return rows[0] if single else rows

    def to_json(self) -> dict:
        """The manifest's ``music_features`` field (floats round-trip exactly through JSON)."""
        return {"names": list(self.names), "dims": self.dims, "groups": self.groups,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "weights": dict(self.weights), "normalisation": "l2"}

    @classmethod
    def from_json(cls, data: Mapping) -> Standardiser:
        if not isinstance(data, Mapping):
            raise FeatureError(f"{MANIFEST_FIELD} must be an object, got {type(data).__name__}: rebuild the index")
        missing = [key for key in ("names", "mean", "std") if key not in data]
        if missing:
            raise FeatureError(f"{MANIFEST_FIELD} lacks {', '.join(missing)}: rebuild the index")
        made = cls(data["mean"], data["std"], tuple(data["names"]), dict(data.get("weights") or {}))
        if "dims" in data and int(data["dims"]) != made.dims:
            raise FeatureError(f"{MANIFEST_FIELD} says {data['dims']} dims but names {made.dims}: rebuild the index")
        return made

    def identity(self) -> str:
        """What makes two libraries' vectors comparable: the features, their statistics and weights."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]
        return f"music-features/{self.dims}d/{digest}"

    def embedding(self, **describe) -> dict:
        """An ``IndexSpec.embedding`` for vectors this standardiser made (``versions.add`` compares
        ``identity``: vectors standardised another way are refused)."""
        return {"identity": self.identity(), "dims": self.dims, "groups": self.groups, **describe}
