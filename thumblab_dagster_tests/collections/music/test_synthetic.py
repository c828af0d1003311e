"""Synthetic tracks: the files the other music tests and the demo are built from."""

import mutagen
import numpy as np
import pytest
import soundfile as sf

from thumblab_dagster.lib.collections.music.synthetic import STYLES, demo_library, render, synthesise_track


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_writes_the_format_of_its_suffix_at_the_asked_length_and_rate(tmp_path, suffix):
    path = synthesise_track(tmp_path / f"track{suffix}", seconds=2.0, sample_rate=22050)

    info = sf.info(str(path))
    assert path.exists() and info.samplerate == 22050 and info.channels == 1
    assert info.format == {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[suffix]
    assert info.duration == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_tags_are_readable_by_mutagen(tmp_path, suffix):
    path = synthesise_track(tmp_path / f"tagged{suffix}", seconds=1.0, title="Night Drive", artist="Click Theory", album="Grid")

    tags = mutagen.File(path, easy=True)
    assert tags is not None
    if suffix == ".flac":
        assert (tags["title"], tags["artist"], tags["album"]) == (["Night Drive"], ["Click Theory"], ["Grid"])
    else:  # wav carries an ID3 chunk
        id3 = mutagen.File(path).tags
        assert (str(id3["TIT2"]), str(id3["TPE1"]), str(id3["TALB"])) == ("Night Drive", "Click Theory", "Grid")


def test_untagged_when_no_tags_are_given(tmp_path):
    path = synthesise_track(tmp_path / "plain.wav", seconds=1.0)

    assert mutagen.File(path).tags is None


def test_same_seed_same_samples_other_seed_or_style_other_samples():
    common = dict(tempo_bpm=120.0, key="A", scale="minor", seconds=1.0, sample_rate=16000)
    first = render(style="clicks", seed=1, **common)
    again = render(style="clicks", seed=1, **common)
    other_seed = render(style="clicks", seed=2, **common)
    pads = render(style="pads", seed=1, **common)

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert not np.allclose(first, pads, atol=0.05)
    assert np.max(np.abs(first)) <= 0.8 + 1e-6 and np.isfinite(first).all()


@pytest.mark.parametrize(
    "arguments, words",
    [
        (dict(style="dubstep"), "style 'dubstep'"),
        (dict(key="H"), "key 'H'"),
        (dict(scale="dorian"), "scale 'dorian'"),
        (dict(tempo_bpm=0.0), "must be positive"),
    ],
)
def test_bad_arguments_are_one_clear_line(tmp_path, arguments, words):
    with pytest.raises(ValueError) as error:
        synthesise_track(tmp_path / "bad.wav", seconds=1.0, **arguments)

    assert words in str(error.value) and "\n" not in str(error.value)


def test_unwritable_suffix_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"song\.mp3: cannot write \.mp3"):
        synthesise_track(tmp_path / "song.mp3", seconds=1.0)


def test_flat_keys_are_accepted(tmp_path):
    path = synthesise_track(tmp_path / "flat.wav", key="Bb", scale="major", seconds=1.0)

    assert path.exists()


def test_demo_library_has_both_styles_and_several_artists_per_style(tmp_path):
    paths = demo_library(tmp_path / "music", per_style=3, seconds=1.0)

    assert len(paths) == 3 * len(STYLES) and all(path.exists() for path in paths)
    by_style = {style: [path for path in paths if path.name.startswith(style)] for style in STYLES}
    assert all(len(files) == 3 for files in by_style.values())
    for files in by_style.values():
        artists = {mutagen.File(path, easy=True)["artist"][0] if path.suffix == ".flac" else str(mutagen.File(path).tags["TPE1"])
                   for path in files}
        assert len(artists) >= 2
    assert len({path.name for path in paths}) == len(paths)
