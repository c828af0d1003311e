"""MusiCNN (MSD_musicnn, 50 Million Song Dataset tags) in torch, with the weights the `musicnn` package ships.

Why a port: the package's network is TF1 graph code; running it needs tensorflow + tf_keras
(about 2.4 GB installed, 5 s to import, both `tensorflow` and `tensorflow-cpu` wheels because
tf_keras pins the former) plus librosa, numba and scikit-learn, and it pins numpy<1.17. torch
is already here for CLIP. The port reads the package's checkpoint (tf_checkpoint.py) and
reproduces its graph op for op: activations equal TensorFlow's to float32 rounding
(benchmarks/musicnn_port_check.py compares both, given a TensorFlow venv).

Input, as musicnn.extractor: mono 16 kHz audio -> log-mel spectrogram (512-point STFT, hop 256,
96 slaney mel bands, log10(10000 x + 1)) -> patches of 187 frames (3 s, no overlap) -> network
-> sigmoid tag activations per patch. Two deliberate differences: the package rounds the mel
power to float16 and then multiplies in float16, which overflows to inf (NaN tags) on loud audio;
we keep the float16 rounding but multiply in float32. And a clip shorter than one patch is one
shorter patch (the network pools over time, so any length works) instead of an error.
"""

from __future__ import annotations

import os
import threading
from importlib import metadata, util
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.music.tf_checkpoint import read_checkpoint

SAMPLE_RATE = 16000
FFT_SIZE = 512
FFT_HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s, what the model was trained on
MODEL_NAME = "MSD_musicnn"
BN_EPSILON = 1e-3  # tf.layers.batch_normalization's default

# The 50 tags in the model's output order (musicnn.configuration.MSD_LABELS).
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
    "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
    "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist",
    "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk",
    "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
)  # fmt: skip


class MusicnnUnavailable(RuntimeError):
    """The musicnn package (and so its weights) is not installed."""


def weights_prefix() -> str:
    """The checkpoint prefix inside the installed musicnn package (found without importing it: it imports TF)."""
    spec = util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnUnavailable(
            "MusiCNN weights not found: install them with `pip install --no-deps musicnn` (make install does), "
            "or analyse with include_tensorflow=False"
        )
    # The checkpoint files are ".index" and ".data-00000-of-00001" inside the model folder: an empty file stem.
    return str(Path(next(iter(spec.submodule_search_locations))) / MODEL_NAME) + os.sep


def version() -> str:
    """The musicnn package version and model, e.g. "0.1.0 MSD_musicnn"."""
    try:
        return f"{metadata.version('musicnn')} {MODEL_NAME}"
    except metadata.PackageNotFoundError as error:
        raise MusicnnUnavailable(
            "MusiCNN weights not found: install them with `pip install --no-deps musicnn` (make install does), "
            "or analyse with include_tensorflow=False"
        ) from error


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(frames, 96) mel power spectrogram of 16 kHz mono audio, as librosa.feature.melspectrogram."""
    audio = np.asarray(audio, dtype=np.float32)
    # librosa: centred frames, zero padding (its default since 0.10), periodic Hann window.
    padded = np.pad(audio, FFT_SIZE // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, FFT_SIZE)[::FFT_HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FFT_SIZE) / FFT_SIZE)
    power = (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).astype(np.float32)
    return power @ _mel_filters().T


def log_mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(frames, 96) log-mel spectrogram, musicnn's input."""
    mel = mel_power(audio)
    rounded = np.minimum(mel, np.finfo(np.float16).max).astype(np.float16).astype(np.float32)
    return np.log10(10000 * rounded + 1)


def _mel_filters() -> np.ndarray:
    """(96, 257) slaney-normalised triangular filters on the slaney mel scale (librosa.filters.mel)."""
    fft_freqs = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    filters = np.maximum(0, np.minimum(lower, upper))
    filters *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return filters.astype(np.float32)


_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOG_STEP = _MIN_LOG_HZ / (200.0 / 3), np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    return hz / _F_SP if hz < _MIN_LOG_HZ else _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    linear = _F_SP * mels
    logarithmic = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mels - _MIN_LOG_MEL))
    return np.where(mels >= _MIN_LOG_MEL, logarithmic, linear)


def patches(spectrogram: np.ndarray) -> np.ndarray:
    """(n, frames, 96) non-overlapping 3 s patches; the tail shorter than a patch is dropped, as musicnn does."""
    count = len(spectrogram) // PATCH_FRAMES
    if count == 0:
        return spectrogram[None]
    return spectrogram[: count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, N_MELS)


class MusicnnTagger:
    """The MSD_musicnn network as torch ops over the checkpoint's tensors (inference only)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        import torch

        self._torch = torch
        self._weights = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in tensors.items()}

    @classmethod
    def load(cls, prefix=None) -> MusicnnTagger:
        return cls(read_checkpoint(prefix if prefix is not None else weights_prefix()))

    def activations(self, batch: np.ndarray) -> np.ndarray:
        """(n, 50) sigmoid tag activations of (n, frames, 96) log-mel patches."""
        torch = self._torch
        with torch.inference_mode():
            logits = self._forward(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            return torch.sigmoid(logits).numpy()

    def tag_audio(self, audio_16k: np.ndarray) -> np.ndarray:
        """(50,) activations averaged over the patches of 16 kHz mono audio."""
        # One patch per call: measured 2x faster than one batch on CPU (cache-sized tensors, and
        # oneDNN reuses its kernels for the one shape instead of building them per batch size).
        batch = patches(log_mel_spectrogram(audio_16k))
        return np.concatenate([self.activations(batch[index : index + 1]) for index in range(len(batch))]).mean(axis=0)

    def _bn_affine(self, index: int):
        """Inference batch normalisation as (scale, shift), from the moving statistics."""
        name = "batch_normalization" + (f"_{index}" if index else "")
        w = self._weights
        scale = w[f"{name}/gamma"] / self._torch.sqrt(w[f"{name}/moving_variance"] + BN_EPSILON)
        return scale, w[f"{name}/beta"] - w[f"{name}/moving_mean"] * scale

    def _bn(self, x, index: int, channel_dim: int):
        """Batch normalisation broadcast along ``channel_dim``."""
        scale, shift = self._bn_affine(index)
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return x * scale.reshape(shape) + shift.reshape(shape)

    def _front_block(self, x, conv_index: int, bn_index: int):
        """tf conv2d (HWIO kernel, valid) -> ReLU -> BN -> max over the mel axis, on NCHW input -> (n, C, time).

        Pooled first, normalised after: ReLU and BN are monotone per channel, so max(BN(ReLU(v))) is
        BN(ReLU(max v)) where BN's scale is >= 0 and BN(ReLU(min v)) where it is negative: the same
        numbers, without three passes over the (n, C, time, mel) tensor (a third of the run time).
        """
        torch = self._torch
        name = "conv2d" + (f"_{conv_index}" if conv_index else "")
        kernel = self._weights[f"{name}/kernel"].permute(3, 2, 0, 1)
        out = torch.nn.functional.conv2d(x, kernel, self._weights[f"{name}/bias"])
        scale, shift = self._bn_affine(bn_index)
        extreme = torch.where((scale >= 0)[None, :, None], out.amax(dim=3), out.amin(dim=3))
        return torch.relu(extreme) * scale[None, :, None] + shift[None, :, None]

    def _conv1d(self, x, index: int):
        """A mid-end layer: tf conv2d whose kernel spans every channel = a 1-d conv over time; ReLU."""
        kernel = self._weights[f"conv2d_{index}/kernel"][:, :, 0, :].permute(2, 1, 0)
        padded = self._torch.nn.functional.pad(x, (3, 3))
        return self._torch.relu(self._torch.nn.functional.conv1d(padded, kernel, self._weights[f"conv2d_{index}/bias"]))

    def _forward(self, x):
        torch, pad = self._torch, self._torch.nn.functional.pad
        x = self._bn(x, 0, channel_dim=0)[:, None]  # (n, 1, time, mel); input BN has one channel
        features = []
        # Timbral front end: kernels 38 and 67 mel bands tall, 7 frames wide, time padded 3+3.
        for conv_index, bn_index in ((0, 1), (1, 2)):
            features.append(self._front_block(pad(x, (0, 0, 3, 3)), conv_index, bn_index))
        # Temporal front end: 128/64/32-frame kernels with TF "same" padding (the extra frame after).
        for conv_index, bn_index, frames in ((2, 3, 128), (3, 4, 64), (4, 5, 32)):
            before = (frames - 1) // 2
            features.append(self._front_block(pad(x, (0, 0, before, frames - 1 - before)), conv_index, bn_index))
        front = torch.cat(features, dim=1)  # (n, 561, time)
        mid1 = self._bn(self._conv1d(front, 5), 6, channel_dim=1)
        mid2 = self._bn(self._conv1d(mid1, 6), 7, channel_dim=1) + mid1
        mid3 = self._bn(self._conv1d(mid2, 7), 8, channel_dim=1) + mid2
        feature_map = torch.cat([front, mid1, mid2, mid3], dim=1)  # (n, 753, time)
        # TF flattens (753, [max, mean]): the two pools interleave per channel.
        pooled = torch.stack([feature_map.amax(dim=2), feature_map.mean(dim=2)], dim=2).flatten(1)
        hidden = self._bn(pooled, 9, channel_dim=1)
        hidden = torch.relu(hidden @ self._weights["dense/kernel"] + self._weights["dense/bias"])
        hidden = self._bn(hidden, 10, channel_dim=1)
        return hidden @ self._weights["dense_1/kernel"] + self._weights["dense_1/bias"]


_LOCK = threading.Lock()
_TAGGER: MusicnnTagger | None = None


def shared_tagger() -> MusicnnTagger:
    """One tagger per process: the checkpoint is read once, under a lock, on first use."""
    global _TAGGER
    with _LOCK:
        if _TAGGER is None:
            _TAGGER = MusicnnTagger.load()
        return _TAGGER
