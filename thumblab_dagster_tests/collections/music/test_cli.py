"""``thumblab music``: import / similar / playlist / stats from a features table (no audio), build / scan /
add / similar by path from a small audio folder on the real Postgres, the demo, and errors as one line
and exit 1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.library import MusicLibrary
from thumblab_dagster.lib.collections.music.scan import file_id_for

GUIDE_KEYS = {"index_name", "index_type", "vector_dimension", "total_vectors", "indexed_vectors", "total_files",
              "analyzed_files", "indexed_files", "index_coverage", "build_time", "faiss_available", "index_loaded"}


def run(env, *args):
    return CliRunner().invoke(main, ["music", *map(str, args)], env=env)


def answer(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def features_table(path, per_style: int = 12, seed: int = 0):
    """Two styles in six small columns beside tempo in BPM (which would swamp them raw); five artists;
    a text column (metadata) and a numeric one to exclude."""
    rng = np.random.default_rng(seed)
    style = np.repeat([0, 1], per_style)
    n = len(style)
    frame = pd.DataFrame({"track_id": [f"tr{i:03d}" for i in range(n)], "title": [f"Song {i}" for i in range(n)],
                          "artist": [f"Artist {i % 5}" for i in range(n)], "genre": np.where(style == 0, "rock", "jazz"),
                          **{f"timbre_{j}": np.where(style == 0, 0.3, 0.7) + rng.normal(0, 0.04, n) for j in range(6)},
                          "tempo": rng.uniform(70, 180, n), "year": rng.integers(1990, 2020, n)})
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def imported(tmp_path, music_db_url):
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path / "data"), "THUMBLAB_MUSIC_DB_URL": music_db_url}
    frame = features_table(tmp_path / "features.csv")
    result = run(env, "import", tmp_path / "features.csv", "--id-column", "track_id", "--exclude-columns", "year",
                 "--library", "table")
    assert result.exit_code == 0, result.output
    return env, frame, result


def test_import_builds_a_library_that_similar_playlist_and_stats_answer(imported):
    env, frame, result = imported
    assert "library table: 24 tracks x 7 features from features.csv" in result.stdout and "published" in result.stdout
    genre = dict(zip(frame.track_id, frame.genre))

    similar = answer(run(env, "similar", "tr000", "tr013", "--top-n", 5, "--library", "table", "--json"))
    assert similar["library"] == "table" and similar["top_n"] == 5
    assert [r["query"] for r in similar["results"]] == ["tr000", "tr013"]      # one list per query, in order
    for result in similar["results"]:
        found = result["similar_tracks"]
        assert len(found) == 5 and result["track_id"] == result["query"] and not result["analysed"]
        assert result["query"] not in {t["id"] for t in found}
        assert {genre[t["id"]] for t in found} == {genre[result["query"]]}   # standardised: style, not tempo
        assert [t["similarity"] for t in found] == sorted((t["similarity"] for t in found), reverse=True)
        assert {"id", "path", "title", "artist", "similarity"} <= set(found[0])

    plain = answer(run(env, "playlist", "tr000", "--length", 6, "--library", "table", "--json"))
    mmr = answer(run(env, "playlist", "tr000", "--length", 6, "--diversity", "mmr", "--lambda", 0.3,
                     "--max-per-artist", 1, "--library", "table", "--json"))
    for playlist in (plain, mmr):
        stats = playlist["statistics"]
        assert {"average_similarity", "min_similarity", "max_similarity", "similarity_range"} <= set(stats)
        sims = [t["similarity"] for t in playlist["playlist"]]
        assert stats["min_similarity"] == min(sims) and stats["max_similarity"] == max(sims)
        assert playlist["seed"]["track_id"] == "tr000" and "tr000" not in {t["id"] for t in playlist["playlist"]}
    artists = [t["artist"] for t in mmr["playlist"]]
    assert len(artists) == len(set(artists)) == mmr["statistics"]["length"]   # at most one per artist
    assert mmr["statistics"]["mean_pairwise_similarity"] < plain["statistics"]["mean_pairwise_similarity"]

    stats = answer(run(env, "stats", "--library", "table", "--json"))
    assert GUIDE_KEYS <= set(stats)
    assert (stats["index_name"], stats["vector_dimension"], stats["total_vectors"]) == ("table", 7, 24)
    assert (stats["analyzed_files"], stats["indexed_files"], stats["index_coverage"]) == (24, 24, 1.0)
    assert stats["index_loaded"] and stats["faiss_available"] and stats["index_type"] == "IndexFlatIP"

    readable = run(env, "playlist", "tr000", "--length", 3, "--library", "table")
    assert readable.exit_code == 0 and "playlist from tr000: 3 of 3 tracks" in readable.stdout
    assert "similarity to the seed: average" in readable.stdout


def test_errors_are_one_line_and_exit_1(imported, tmp_path):
    env, _, _ = imported
    one_line_error(run(env, "similar", "nope", "--library", "table"), "'nope'", "not a track id in library table")
    one_line_error(run(env, "similar", "tr000", "../x.wav", "--library", "table"), "'../x.wav'", "not inside the music folder")
    one_line_error(run(env, "similar", "/etc/passwd", "--library", "table"), "not inside the music folder")
    one_line_error(run(env, "playlist", "tr000", "--length", 3), "no music library 'music'", "thumblab music import")
    one_line_error(run(env, "stats", "--library", "../etc"), "--library", "library name")
    one_line_error(run(env, "import", tmp_path / "features.csv", "--id-column", "nope", "--library", "t2"), "nope")
    one_line_error(run(env, "import", tmp_path / "missing.csv", "--id-column", "track_id"), "missing.csv")
    bad = run(env, "playlist", "tr000", "--length", 0, "--library", "table")
    assert bad.exit_code == 2 and "--length" in bad.stderr                       # click's own usage error
    # a file the table's library cannot analyse into its columns
    music = tmp_path / "data" / "music"
    music.mkdir(parents=True, exist_ok=True)
    (music / "song.wav").write_bytes(b"RIFF")
    one_line_error(run(env, "similar", "song.wav", "--library", "table"), "imported from a features table")


def test_build_scan_add_and_similar_by_path_from_an_audio_folder(tmp_path, music_db_url, music_folder):
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path / "data"), "THUMBLAB_MUSIC_DIR": str(music_folder.root),
           "THUMBLAB_MUSIC_DB_URL": music_db_url, "THUMBLAB_MUSIC_FEATURES": "essentia"}
    for i, (style, tempo) in enumerate([("clicks", 120), ("clicks", 100), ("pads", 80), ("pads", 70)]):
        music_folder.write(f"{style}_{i}.wav", seconds=3.0, style=style, tempo_bpm=tempo, seed=i, title=f"{style} {i}",
                           artist=f"artist {i % 2}")
    built = answer(run(env, "build", "--json"))
    assert built["published"] and built["indexed"] == 4 and built["dimensions"] == 17 and built["analysis"]["analysed"] == 4
    again = run(env, "build")
    assert again.exit_code == 0 and "is unchanged" in again.stdout
    assert music_db_url not in again.stdout + again.stderr

    stats = answer(run(env, "stats", "--json"))
    assert GUIDE_KEYS <= set(stats)
    assert (stats["total_files"], stats["analyzed_files"], stats["indexed_files"], stats["index_coverage"]) == (4, 4, 4, 1.0)

    music_folder.write("new/late.wav", seconds=3.0, style="clicks", tempo_bpm=110, seed=9, artist="artist 9")
    scanned = answer(run(env, "scan", "--json"))
    assert scanned["new"] == 1 and scanned["pending_analysis"] == 1

    # a file the library holds is answered by its id; a new file is analysed on the fly
    similar = answer(run(env, "similar", "clicks_0.wav", "new/late.wav", "--top-n", 3, "--json"))
    held, late = similar["results"]
    assert held["track_id"] == file_id_for("clicks_0.wav") and not held["analysed"]
    assert late["track_id"] is None and late["analysed"] and late["path"] == "new/late.wav"
    assert len(held["similar_tracks"]) == len(late["similar_tracks"]) == 3

    added = answer(run(env, "add", "new/late.wav", "--json"))
    assert added["file_id"] == file_id_for("new/late.wav") and added["position"] == 4 and added["published"]
    stats = answer(run(env, "stats", "--json"))
    assert (stats["total_vectors"], stats["indexed_files"], stats["analyzed_files"]) == (5, 5, 5)
    library = MusicLibrary.load(MusicLayout.at(tmp_path / "data").library("music"))
    assert file_id_for("new/late.wav") in library
    one_line_error(run(env, "add", "new/late.wav"), "already in library music")
    one_line_error(run(env, "add", "../outside.wav"), "not inside the music folder")


def test_demo_builds_a_generated_library_and_prints_two_playlists(tmp_path):
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path / "data"), "THUMBLAB_MUSIC_FEATURES": "essentia"}
    result = run(env, "demo", "--per-style", 3, "--seconds", 3)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "6 generated tracks" in out and "published: 6 tracks, 17-d" in out and "id_map_alignment passed" in out
    assert out.count("playlist from Clicks 1") == 2 and "(diversity mmr)" in out
    assert out.count("similarity to the seed: average") == 2
