"""One audio file -> its track features: Essentia's tempo, key and chroma, MusiCNN's 50 MSD tags.

Decoding is Essentia's AudioLoader (ffmpeg inside: wav, flac, mp3, ogg, ...), done once per file:
the mono mix is resampled to 44.1 kHz for Essentia's algorithms and to 16 kHz for MusiCNN.
- tempo: RhythmExtractor2013 (multifeature; its confidence runs 0..5.32, above ~3.5 is reliable).
  0.0 when no beat is found (silence, clips under a second) or the estimate leaves its 40-208 BPM
  search range (silence yields 738 BPM otherwise).
- key, scale, strength: KeyExtractor (its defaults, "bgate" profiles), flats spelled as sharps.
- chroma: mean HPCP over 4096-sample frames, rotated from Essentia's A-first order to C..B and
  scaled so the largest bin is 1 (all zeros for silence); dominant_chroma is its argmax.
- tags: MSD_musicnn activations averaged over 3 s patches (musicnn_torch.py: the package's
  weights run in torch). ``include_tensorflow`` keeps the name the playlist service's API uses;
  False skips the network (and torch) entirely and gives ``tags=None``.

Essentia and torch are imported on first use, so importing this module (for Analysis or
MSD_TAGS) stays cheap.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.music import musicnn_torch
from thumblab_dagster.lib.collections.music.musicnn_torch import MSD_TAGS

__all__ = ["MSD_TAGS", "Analysis", "AudioDecodeError", "analyse", "analyzer_versions", "KEYS"]

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_SHARPS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}
ESSENTIA_RATE = 44100
TEMPO_RANGE = (40.0, 208.0)  # RhythmExtractor2013's default search range
# Bump when this module's own parameters change (HPCP settings, folding, averaging): stored
# analyses carry it in ``versions`` so a rebuild can tell stale results from current ones.
FEATURES_VERSION = "1"


class AudioDecodeError(ValueError):
    """The file cannot be decoded into audio samples (one line naming the file and what to do)."""


@dataclass(frozen=True)
class Analysis:
    duration_seconds: float
    tempo_bpm: float
    tempo_confidence: float
    key: str
    scale: str
    key_strength: float
    chroma: tuple[float, ...]
    dominant_chroma: int
    tags: tuple[float, ...] | None
    versions: dict[str, str]

    def to_json(self) -> dict:
        """Plain JSON types (lists for tuples), the shape stored in Postgres and manifests."""
        data = asdict(self)
        data["chroma"] = list(self.chroma)
        data["tags"] = None if self.tags is None else list(self.tags)
        data["versions"] = dict(self.versions)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Analysis:
        tags = data.get("tags")
        return cls(
            duration_seconds=float(data["duration_seconds"]),
            tempo_bpm=float(data["tempo_bpm"]),
            tempo_confidence=float(data["tempo_confidence"]),
            key=str(data["key"]),
            scale=str(data["scale"]),
            key_strength=float(data["key_strength"]),
            chroma=tuple(float(value) for value in data["chroma"]),
            dominant_chroma=int(data["dominant_chroma"]),
            tags=None if tags is None else tuple(float(value) for value in tags),
            versions={str(name): str(value) for name, value in dict(data.get("versions") or {}).items()},
        )


def analyse(path, include_tensorflow: bool = True) -> Analysis:
    """Analyse one audio file; raises AudioDecodeError when it holds no decodable audio."""
    path = Path(path)
    mono, rate = _decode(path)
    audio = _resample(mono, rate, ESSENTIA_RATE)
    tempo, confidence = _tempo(audio)
    key, scale, strength = _key(audio)
    chroma = _chroma(audio)
    tags = None
    if include_tensorflow:
        activations = musicnn_torch.shared_tagger().tag_audio(_resample(mono, rate, musicnn_torch.SAMPLE_RATE))
        tags = tuple(float(value) for value in activations)
    return Analysis(
        duration_seconds=float(len(mono) / rate),
        tempo_bpm=tempo,
        tempo_confidence=confidence,
        key=key,
        scale=scale,
        key_strength=strength,
        chroma=tuple(float(value) for value in chroma),
        dominant_chroma=int(np.argmax(chroma)),
        tags=tags,
        versions=analyzer_versions(include_tensorflow),
    )


def analyzer_versions(include_tensorflow: bool = True) -> dict[str, str]:
    """Analyzer -> version, stored with every result."""
    versions = {"essentia": metadata.version("essentia"), "features": FEATURES_VERSION}
    if include_tensorflow:
        versions["musicnn"] = musicnn_torch.version()
        versions["musicnn_runtime"] = f"torch {metadata.version('torch')}"
    return versions


_ESSENTIA_LOCK = threading.Lock()


def _essentia():
    """essentia.standard, imported once with its INFO chatter (a line per import) silenced."""
    with _ESSENTIA_LOCK:
        import essentia

        essentia.log.infoActive = False
        import essentia.standard

        return essentia.standard


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """(mono float32 samples, sample rate) at the file's own rate."""
    if not path.is_file():
        raise AudioDecodeError(f"{path.name}: cannot decode audio (no such file); check the path")
    es = _essentia()
    try:
        samples, rate, channels, *_ = es.AudioLoader(filename=str(path))()
    except RuntimeError as error:
        raise AudioDecodeError(f"{path.name}: cannot decode audio ({_reason(error, path)}); {_ADVICE}") from None
    mono = es.MonoMixer()(samples, channels) if len(samples) else np.zeros(0, dtype=np.float32)
    if len(mono) == 0 or not rate > 0:
        raise AudioDecodeError(f"{path.name}: cannot decode audio (no audio samples); {_ADVICE}")
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"{path.name}: cannot decode audio (samples are not finite numbers); {_ADVICE}")
    return mono, float(rate)


_ADVICE = "re-encode it as wav, flac, mp3 or ogg, or remove it from the music folder"


def _reason(error: RuntimeError, path: Path) -> str:
    """Essentia's message without its prefixes and without the full path (it may be a server's)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "error = " in text:
        text = text.rsplit("error = ", 1)[1]
    return text.replace(str(path), path.name).strip() or "unknown decoder error"


def _resample(audio: np.ndarray, rate: float, target: int) -> np.ndarray:
    if int(round(rate)) == target:
        return audio
    return _essentia().Resample(inputSampleRate=float(rate), outputSampleRate=float(target), quality=1)(audio)


def _tempo(audio: np.ndarray) -> tuple[float, float]:
    bpm, ticks, confidence, _, _ = _essentia().RhythmExtractor2013(method="multifeature")(audio)
    low, high = TEMPO_RANGE
    if len(ticks) < 2 or not low <= bpm <= high:
        return 0.0, 0.0
    return float(bpm), float(confidence)


def _key(audio: np.ndarray) -> tuple[str, str, float]:
    key, scale, strength = _essentia().KeyExtractor(sampleRate=ESSENTIA_RATE)(audio)
    return _SHARPS.get(key, key), scale, float(strength)


def _chroma(audio: np.ndarray) -> np.ndarray:
    """(12,) mean HPCP, C..B, largest bin 1 (zeros when there is no tonal content)."""
    es = _essentia()
    window = es.Windowing(type="blackmanharris62")
    spectrum = es.Spectrum()
    peaks = es.SpectralPeaks(
        orderBy="magnitude", magnitudeThreshold=1e-5, minFrequency=20, maxFrequency=3500, maxPeaks=60,
        sampleRate=ESSENTIA_RATE,
    )  # fmt: skip
    hpcp = es.HPCP(
        size=12, referenceFrequency=440, harmonics=8, bandPreset=True, minFrequency=20, maxFrequency=3500,
        weightType="cosine", nonLinear=False, windowSize=1.0, normalized="unitMax", sampleRate=ESSENTIA_RATE,
    )  # fmt: skip
    frames = [hpcp(*peaks(spectrum(window(frame)))) for frame in es.FrameGenerator(audio, frameSize=4096, hopSize=2048)]
    if not frames:
        return np.zeros(12)
    # Essentia's bin 0 is the reference frequency's pitch (A); C is 3 bins above it.
    mean = np.roll(np.mean(frames, axis=0), -3)
    peak = float(mean.max())
    return mean / peak if peak > 0 else np.zeros(12)
