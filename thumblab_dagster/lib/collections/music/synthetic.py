"""Synthetic tracks with a known tempo, key and style, for tests and the demo (no audio downloads).

Two styles that a tag model tells apart:
- ``clicks``: a click track on every beat (accented downbeat, a low kick under it) over a bright
  sustained chord progression (sawtooth-like partials);
- ``pads``: soft chords over a tonic drone (slow attack, detuned sine partials, a lower register),
  no percussion.

Both play the key's cadence, a chord every two beats (i-iv-V-i in minor with the raised leading
tone, I-IV-V-I in major): a lone triad is ambiguous between a key and its relative, a cadence is
not, and at two beats a chord even a 4 s clip holds the whole cadence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E"}
STYLES = ("clicks", "pads")
WRITABLE_SUFFIXES = (".wav", ".flac", ".ogg")

# Chord roots (semitones above the tonic) and qualities of the cadence, a chord every two beats.
_CADENCES = {
    "major": ((0, "major"), (5, "major"), (7, "major"), (0, "major")),
    "minor": ((0, "minor"), (5, "minor"), (7, "major"), (0, "minor")),
}
_TRIADS = {"major": (0, 4, 7), "minor": (0, 3, 7)}


def pitch_class(key: str) -> int:
    """0 for C ... 11 for B; flats are accepted (``Bb`` is ``A#``)."""
    name = _FLATS.get(key, key)
    if name not in PITCH_CLASSES:
        raise ValueError(f"key {key!r}: not a pitch class; use one of {', '.join(PITCH_CLASSES)}")
    return PITCH_CLASSES.index(name)


def synthesise_track(
    path,
    *,
    tempo_bpm: float = 120.0,
    key: str = "A",
    scale: str = "minor",
    seconds: float = 6.0,
    sample_rate: int = 44100,
    style: str = "clicks",
    seed: int = 0,
    title: str | None = None,
    artist: str | None = None,
    album: str | None = None,
) -> Path:
    """Write a mono track (format by suffix: .wav, .flac or .ogg) and tag it when tags are given."""
    import soundfile as sf

    path = Path(path)
    if path.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ValueError(f"{path.name}: cannot write {path.suffix or 'no suffix'}; use one of {', '.join(WRITABLE_SUFFIXES)}")
    if style not in STYLES:
        raise ValueError(f"style {style!r}: unknown; use one of {', '.join(STYLES)}")
    if scale not in _CADENCES:
        raise ValueError(f"scale {scale!r}: unknown; use 'major' or 'minor'")
    if not tempo_bpm > 0 or not seconds > 0:
        raise ValueError(f"tempo_bpm {tempo_bpm} and seconds {seconds}: both must be positive")
    signal = render(tempo_bpm=tempo_bpm, key=key, scale=scale, seconds=seconds, sample_rate=sample_rate, style=style, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "VORBIS" if path.suffix.lower() == ".ogg" else "PCM_16"
    sf.write(str(path), signal, sample_rate, subtype=subtype)
    if title is not None or artist is not None or album is not None:
        _write_tags(path, title=title, artist=artist, album=album)
    return path


def render(*, tempo_bpm: float, key: str, scale: str, seconds: float, sample_rate: int, style: str, seed: int) -> np.ndarray:
    """The track as float32 samples in [-0.8, 0.8]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    beat = 60.0 / tempo_bpm
    chord_seconds = 2 * beat
    tonic = pitch_class(key)
    if style == "clicks":
        signal = _chords(t, chord_seconds, tonic, scale, rng, bright=True) * 0.35 + _clicks(n, sample_rate, beat, rng)
    else:
        # A tonic drone under the pads: soft chords alone drift towards their relative keys.
        drone = sum(np.sin(2 * np.pi * _frequency(tonic, 2) * h * t) / h for h in (1, 2, 3))
        signal = _chords(t, chord_seconds, tonic, scale, rng, bright=False) + 0.15 * drone
    peak = float(np.max(np.abs(signal))) or 1.0
    return (0.8 * signal / peak).astype(np.float32)


def _frequency(pitch: int, octave: int) -> float:
    """Equal temperament, A4 = 440 Hz; ``pitch`` 0 = C."""
    return 440.0 * 2.0 ** ((pitch - 9) / 12 + (octave - 4))


def _chords(t: np.ndarray, length: float, tonic: int, scale: str, rng, *, bright: bool) -> np.ndarray:
    """The cadence, a chord every ``length`` seconds; bright = sawtooth partials, else detuned soft sines."""
    cadence = _CADENCES[scale]
    chord_index = (t // length).astype(int) % len(cadence)
    position = t % length
    signal = np.zeros_like(t)
    for index, (step, quality) in enumerate(cadence):
        mask = chord_index == index
        if not mask.any():
            continue
        root = (tonic + step) % 12
        notes = [(root, 3)] + [((root + interval) % 12, 4) for interval in _TRIADS[quality]]
        tone = np.zeros(int(mask.sum()))
        local_t = t[mask]
        for pitch, octave in notes:
            f0 = _frequency(pitch, octave - (0 if bright else 1))
            if bright:
                for harmonic in range(1, 7):
                    tone += np.sin(2 * np.pi * f0 * harmonic * local_t + rng.uniform(0, 2 * np.pi)) / harmonic
            else:
                for detune in (-0.003, 0.0, 0.003):
                    tone += np.sin(2 * np.pi * f0 * (1 + detune) * local_t + rng.uniform(0, 2 * np.pi))
                tone += 0.3 * np.sin(2 * np.pi * 2 * f0 * local_t)
        # Bright chords strike and sustain; pads swell in slowly (no onsets to hear as beats).
        attack = 0.01 if bright else 0.6 * length
        envelope = np.minimum(1.0, position[mask] / attack) * np.minimum(1.0, (length - position[mask]) / 0.02)
        signal[mask] = tone * envelope
    return signal / 8.0


def _clicks(n: int, sample_rate: int, beat: float, rng) -> np.ndarray:
    """A click (and a low kick) on every beat, the downbeat of each bar accented."""
    signal = np.zeros(n)
    length = int(0.06 * sample_rate)
    local_t = np.arange(length) / sample_rate
    click = (np.sin(2 * np.pi * 1800 * local_t) + 0.5 * rng.standard_normal(length)) * np.exp(-local_t / 0.008)
    kick = np.sin(2 * np.pi * (55 + 90 * np.exp(-local_t / 0.02)) * local_t) * np.exp(-local_t / 0.05)
    count = int(n / (beat * sample_rate)) + 1
    for index in range(count):
        start = int(round(index * beat * sample_rate))
        if start >= n:
            break
        stop = min(n, start + length)
        gain = 1.0 if index % 4 == 0 else 0.6
        signal[start:stop] += gain * (click[: stop - start] + kick[: stop - start])
    return signal


def _write_tags(path: Path, *, title: str | None, artist: str | None, album: str | None) -> None:
    """Vorbis comments for flac/ogg, an ID3 chunk for wav (what taggers and mutagen read back)."""
    values = {"title": title, "artist": artist, "album": album}
    suffix = path.suffix.lower()
    if suffix in (".flac", ".ogg"):
        from mutagen.flac import FLAC
        from mutagen.oggvorbis import OggVorbis

        audio = FLAC(path) if suffix == ".flac" else OggVorbis(path)
        for name, value in values.items():
            if value is not None:
                audio[name] = [value]
        audio.save()
        return
    from mutagen.id3 import TALB, TIT2, TPE1
    from mutagen.wave import WAVE

    audio = WAVE(path)
    if audio.tags is None:
        audio.add_tags()
    for frame, value in ((TIT2, title), (TPE1, artist), (TALB, album)):
        if value is not None:
            audio.tags.add(frame(encoding=3, text=[value]))
    audio.save()


# The demo library: two styles, two artists each, a spread of tempi and keys.
_DEMO = {
    "clicks": {
        "artists": ("The Metronomes", "Click Theory"),
        "album": "Grid Work",
        "tempi": (96.0, 110.0, 120.0, 128.0, 104.0, 136.0),
        "keys": (("A", "minor"), ("E", "major"), ("C", "major"), ("D", "minor"), ("G", "major"), ("F#", "minor")),
        "suffix": ".flac",
    },
    "pads": {
        "artists": ("Soft Focus", "Ambient Drift"),
        "album": "Slow Air",
        "tempi": (70.0, 80.0, 90.0, 76.0, 84.0, 66.0),
        "keys": (("C", "major"), ("F", "major"), ("A", "minor"), ("D", "major"), ("E", "minor"), ("G", "major")),
        "suffix": ".wav",
    },
}


def demo_library(folder, per_style: int = 4, seconds: float = 6.0, seed: int = 0) -> list[Path]:
    """Write ``per_style`` tagged tracks of each style into ``folder``; artists alternate within a style."""
    folder = Path(folder)
    paths = []
    for style_index, (style, plan) in enumerate(_DEMO.items()):
        for index in range(per_style):
            tempo = plan["tempi"][index % len(plan["tempi"])]
            key, scale = plan["keys"][index % len(plan["keys"])]
            artist = plan["artists"][index % len(plan["artists"])]
            name = f"{style}_{index + 1:02d}{plan['suffix']}"
            paths.append(
                synthesise_track(
                    folder / name,
                    tempo_bpm=tempo,
                    key=key,
                    scale=scale,
                    seconds=seconds,
                    style=style,
                    seed=seed + 1000 * style_index + index,
                    title=f"{style.title()} {index + 1} ({key} {scale}, {tempo:g} BPM)",
                    artist=artist,
                    album=plan["album"],
                )
            )
    return paths
