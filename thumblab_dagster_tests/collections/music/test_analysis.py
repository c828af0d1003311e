"""Track analysis on synthesised audio: real Essentia, real MusiCNN weights (the musicnn package's checkpoint)."""

import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from thumblab_dagster.lib.collections.music import musicnn_torch
from thumblab_dagster.lib.collections.music.analysis import (
    KEYS,
    MSD_TAGS,
    Analysis,
    AudioDecodeError,
    analyse,
    analyzer_versions,
)
from thumblab_dagster.lib.collections.music.synthetic import synthesise_track
from thumblab_dagster.lib.collections.music.tf_checkpoint import CheckpointError, read_checkpoint

# Four seconds each: enough for RhythmExtractor2013 and for the whole cadence that fixes the key.
TRACKS = {
    "clicks_100_a_minor": dict(style="clicks", tempo_bpm=100.0, key="A", scale="minor", suffix=".flac"),
    # 48 kHz: decoding resamples to 44.1 kHz for Essentia and 16 kHz for MusiCNN.
    "clicks_128_e_major": dict(style="clicks", tempo_bpm=128.0, key="E", scale="major", suffix=".wav", sample_rate=48000),
    "pads_90_c_major": dict(style="pads", tempo_bpm=90.0, key="C", scale="major", suffix=".flac"),
    "pads_70_f_sharp_minor": dict(style="pads", tempo_bpm=70.0, key="F#", scale="minor", suffix=".wav", seed=5),
}
CLICKS = ["clicks_100_a_minor", "clicks_128_e_major"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("music")
    paths = {}
    for name, spec in TRACKS.items():
        spec = dict(spec)
        suffix = spec.pop("suffix")
        paths[name] = synthesise_track(folder / f"{name}{suffix}", seconds=4.0, **spec)
    return paths


@pytest.fixture(scope="module")
def analyses(files):
    """Each track analysed once with tags, shared by the module's tests."""
    return {name: analyse(path) for name, path in files.items()}


@pytest.fixture(scope="module")
def without_tags(files):
    return analyse(files["clicks_100_a_minor"], include_tensorflow=False)


@pytest.mark.parametrize("name", CLICKS)
def test_tempo_is_within_2_bpm_of_the_synthesised_tempo(analyses, name):
    assert abs(analyses[name].tempo_bpm - TRACKS[name]["tempo_bpm"]) <= 2.0
    assert analyses[name].tempo_confidence >= 0.0


@pytest.mark.parametrize("name", list(TRACKS))
def test_key_and_scale_are_the_synthesised_ones(analyses, name):
    analysis = analyses[name]

    assert (analysis.key, analysis.scale) == (TRACKS[name]["key"], TRACKS[name]["scale"])
    assert 0.5 < analysis.key_strength <= 1.0


@pytest.mark.parametrize("name", list(TRACKS))
def test_chroma_is_twelve_bins_from_c_peaking_on_the_tonic(analyses, name):
    analysis = analyses[name]

    assert len(analysis.chroma) == 12 and max(analysis.chroma) == pytest.approx(1.0) and min(analysis.chroma) >= 0.0
    assert analysis.dominant_chroma == KEYS.index(TRACKS[name]["key"]) == int(np.argmax(analysis.chroma))


def test_duration_is_the_files_length(analyses):
    assert all(analysis.duration_seconds == pytest.approx(4.0, abs=0.01) for analysis in analyses.values())


def test_tag_names_are_the_packages_in_its_order():
    from musicnn.configuration import MSD_LABELS  # plain constants: importing them does not need TensorFlow

    assert MSD_TAGS == tuple(MSD_LABELS) and len(MSD_TAGS) == 50


def test_musicnn_gives_50_finite_activations_with_the_bundled_weights(analyses):
    for analysis in analyses.values():
        assert analysis.tags is not None and len(analysis.tags) == 50
        assert all(math.isfinite(value) and 0.0 <= value <= 1.0 for value in analysis.tags)
        # Trained weights say something; random ones hover around 0.5 everywhere.
        assert max(analysis.tags) > 0.2 and min(analysis.tags) < 0.05


def test_the_two_styles_give_clearly_different_tag_vectors(analyses):
    names = list(analyses)
    tags = np.array([analyses[name].tags for name in names])
    unit = tags / np.linalg.norm(tags, axis=1, keepdims=True)
    cosine = unit @ unit.T
    style = [TRACKS[name]["style"] for name in names]
    same = [cosine[i, j] for i in range(len(names)) for j in range(i + 1, len(names)) if style[i] == style[j]]
    other = [cosine[i, j] for i in range(len(names)) for j in range(i + 1, len(names)) if style[i] != style[j]]

    assert min(same) > max(other) + 0.1
    ambient = MSD_TAGS.index("ambient")
    assert min(analyses[name].tags[ambient] for name in names if "pads" in name) > max(
        analyses[name].tags[ambient] for name in CLICKS
    )


def test_without_tensorflow_tags_are_none_and_the_rest_is_the_same(analyses, without_tags):
    with_tags = analyses["clicks_100_a_minor"]

    assert without_tags.tags is None
    assert "musicnn" not in without_tags.versions and "essentia" in without_tags.versions
    assert (without_tags.tempo_bpm, without_tags.key, without_tags.scale, without_tags.chroma) == (
        with_tags.tempo_bpm,
        with_tags.key,
        with_tags.scale,
        with_tags.chroma,
    )


def test_versions_name_every_analyzer(analyses):
    versions = analyses["pads_90_c_major"].versions

    assert versions == analyzer_versions(include_tensorflow=True)
    assert versions["musicnn"].endswith("MSD_musicnn") and versions["essentia"] and versions["features"]


def test_json_round_trip(analyses, without_tags):
    for analysis in [*analyses.values(), without_tags]:
        data = json.loads(json.dumps(analysis.to_json()))

        assert Analysis.from_json(data) == analysis


def _garbage(path):
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio" * 20)


def _empty(path):
    path.write_bytes(b"")


def _zero_samples(path):
    sf.write(str(path), np.zeros(0, dtype=np.float32), 44100)


@pytest.mark.parametrize(
    "name, write",
    [("garbage.wav", _garbage), ("empty.flac", _empty), ("zero_samples.wav", _zero_samples), ("missing.ogg", None)],
)
def test_undecodable_file_raises_one_line_naming_the_file(tmp_path, name, write):
    path = tmp_path / name
    if write is not None:
        write(path)

    with pytest.raises(AudioDecodeError) as error:
        analyse(path, include_tensorflow=False)

    message = str(error.value)
    assert message.startswith(f"{name}: cannot decode audio (") and "\n" not in message
    assert str(tmp_path) not in message  # the reason is the decoder's, without the server's folders
    assert isinstance(error.value, ValueError)


def test_silence_has_no_tempo_and_an_all_zero_chroma(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(44100 * 2, dtype=np.float32), 44100)

    analysis = analyse(path, include_tensorflow=False)

    assert (analysis.tempo_bpm, analysis.tempo_confidence) == (0.0, 0.0)
    assert analysis.chroma == (0.0,) * 12 and analysis.dominant_chroma == 0


def test_the_model_is_loaded_once_per_process_across_threads(monkeypatch):
    monkeypatch.setattr(musicnn_torch, "_TAGGER", None)
    loads = []
    original = musicnn_torch.MusicnnTagger.load

    def counting_load(*args, **kwargs):
        loads.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(musicnn_torch.MusicnnTagger, "load", counting_load)
    with ThreadPoolExecutor(4) as pool:
        taggers = list(pool.map(lambda _: musicnn_torch.shared_tagger(), range(8)))

    assert len(loads) == 1 and all(tagger is taggers[0] for tagger in taggers)


def test_a_clip_shorter_than_one_patch_is_tagged():
    audio = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.3  # 1 s < 3 s patch

    tags = musicnn_torch.shared_tagger().tag_audio(audio)

    assert tags.shape == (50,) and np.isfinite(tags).all()


def test_loud_audio_stays_finite():
    # musicnn's own float16 arithmetic overflows to inf (NaN tags) on loud input; ours must not.
    loud = np.sign(np.sin(2 * np.pi * 60 * np.arange(16000 * 3) / 16000)).astype(np.float32)

    assert np.isfinite(musicnn_torch.shared_tagger().tag_audio(loud)).all()


def test_the_checkpoint_reader_reads_the_shipped_weights():
    tensors = read_checkpoint(musicnn_torch.weights_prefix())

    assert tensors["conv2d/kernel"].shape == (7, 38, 1, 204) and tensors["dense_1/kernel"].shape == (200, 50)
    assert tensors["conv2d/kernel"].dtype == np.float32 and np.isfinite(tensors["dense/kernel"]).all()


def test_a_damaged_checkpoint_is_one_clear_line(tmp_path):
    prefix = str(tmp_path / "model") + "/"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / ".index").write_bytes(b"\x00" * 40 + struct.pack("<Q", 12345))
    (tmp_path / "model" / ".data-00000-of-00001").write_bytes(b"")

    with pytest.raises(CheckpointError, match="not a checkpoint index"):
        read_checkpoint(prefix)
    with pytest.raises(CheckpointError, match="checkpoint file missing"):
        read_checkpoint(str(tmp_path / "nowhere") + "/")


def test_missing_musicnn_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(musicnn_torch.util, "find_spec", lambda name: None)

    with pytest.raises(musicnn_torch.MusicnnUnavailable, match="pip install --no-deps musicnn"):
        musicnn_torch.weights_prefix()
