"""One-off proof that the torch port of MSD_musicnn gives TensorFlow's activations (not a test).

Needs a venv with tensorflow, tf_keras, librosa and musicnn (DESIGN.md's recipe) that can also
import this project, e.g. a scratch venv with a .pth line pointing at the project venv's
site-packages. Prints JSON: the checkpoint tensors read without TF vs TF's reader, our log-mel vs
librosa's, the network's logits and sigmoid activations vs TF's graph on the same patches, and
the whole path (our decode + mel + torch) vs musicnn.extractor on a quiet clip.

    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python benchmarks/musicnn_port_check.py
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from musicnn import configuration, models  # noqa: E402
from musicnn.extractor import extractor  # noqa: E402

from thumblab_dagster.lib.collections.music import musicnn_torch  # noqa: E402
from thumblab_dagster.lib.collections.music.synthetic import synthesise_track  # noqa: E402
from thumblab_dagster.lib.collections.music.tf_checkpoint import read_checkpoint  # noqa: E402


def tf_network(n_frames: int):
    """The package's graph with its checkpoint restored: (session, input, logits)."""
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.reset_default_graph()
    x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, configuration.N_MELS])
    is_training = tf.compat.v1.placeholder(tf.bool)
    logits = models.define_model(x, is_training, "MSD_musicnn", 50)[0]
    session = tf.compat.v1.Session()
    tf.compat.v1.train.Saver().restore(session, str(musicnn_torch.weights_prefix()))
    return session, x, is_training, logits


def main() -> None:
    report = {
        "benchmark": "musicnn_port_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
        "librosa": librosa.__version__,
        "musicnn": musicnn_torch.version(),
    }
    prefix = str(musicnn_torch.weights_prefix())
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    ours = read_checkpoint(prefix)
    report["checkpoint_tensors"] = len(ours)
    report["checkpoint_identical"] = set(reader.get_variable_to_shape_map()) == set(ours) and all(
        np.array_equal(reader.get_tensor(name), value) for name, value in ours.items()
    )

    folder = Path(tempfile.mkdtemp())
    clips = {
        "clicks": synthesise_track(folder / "clicks.wav", style="clicks", tempo_bpm=128, seconds=10, key="E", scale="major"),
        "pads": synthesise_track(folder / "pads.wav", style="pads", tempo_bpm=80, seconds=10, seed=3),
    }
    rng = np.random.default_rng(0)
    tagger = musicnn_torch.MusicnnTagger.load()
    mel_error, logit_error, activation_error = 0.0, 0.0, 0.0
    for path in clips.values():
        audio = librosa.load(str(path), sr=musicnn_torch.SAMPLE_RATE)[0]
        for gain in (1.0, 0.05):
            reference = librosa.feature.melspectrogram(
                y=audio * gain, sr=16000, hop_length=256, n_fft=512, n_mels=96
            ).T.astype(np.float32)
            ours_power = musicnn_torch.mel_power(audio * gain)
            mel_error = max(mel_error, float(np.max(np.abs(ours_power - reference) / (np.abs(reference) + 1e-3))))
    for frames in (musicnn_torch.PATCH_FRAMES, 100):
        session, x, is_training, logits = tf_network(frames)
        batch = []
        # Quiet copies (x0.05): loud ones overflow the package's float16 log-mel, see musicnn_torch.
        for path in clips.values():
            spectrogram = musicnn_torch.log_mel_spectrogram(librosa.load(str(path), sr=16000)[0] * 0.05)
            batch.append(spectrogram[:frames])
        batch.append(rng.uniform(0, 3, size=(frames, 96)).astype(np.float32))
        batch = np.stack(batch)
        tf_logits = session.run(logits, feed_dict={x: batch, is_training: False})
        torch_logits = tagger._forward(tagger._torch.from_numpy(batch)).detach().numpy()
        logit_error = max(logit_error, float(np.max(np.abs(tf_logits - torch_logits))))
        activation_error = max(
            activation_error, float(np.max(np.abs(1 / (1 + np.exp(-tf_logits)) - tagger.activations(batch))))
        )
        session.close()
    report["mel_power_max_relative_error_vs_librosa"] = mel_error
    report["logits_max_abs_error_vs_tf"] = logit_error
    report["activations_max_abs_error_vs_tf"] = activation_error

    # End to end on a quiet clip: the package (librosa soxr resampling, TF) vs ours (same 16 kHz audio).
    quiet = folder / "quiet.wav"
    import soundfile as sf

    audio = librosa.load(str(clips["pads"]), sr=16000)[0] * 0.05
    sf.write(quiet, audio, 16000, subtype="FLOAT")
    with contextlib.redirect_stdout(sys.stderr):  # the extractor prints progress; stdout is the JSON
        taggram, _ = extractor(str(quiet), model="MSD_musicnn", extract_features=False)
    ours_tags = tagger.tag_audio(audio)
    report["end_to_end_max_abs_error_vs_musicnn_extractor"] = float(np.max(np.abs(taggram.mean(axis=0) - ours_tags)))
    report["top_tags"] = [musicnn_torch.MSD_TAGS[i] for i in np.argsort(-ours_tags)[:5]]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
