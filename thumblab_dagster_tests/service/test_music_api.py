"""The music endpoints (``/api/faiss/build-index``, ``statistics``, ``similar-tracks``, ``generate-playlist``,
``extract-vector``) through a real uvicorn server on loopback: a short synthetic audio folder built through
the endpoint on the real Postgres, a features table imported beside it, the guide's fields, and every path
that leaves the music folder refused before anything reads it."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pandas as pd
import pytest
import requests

from thumblab_dagster.lib.collections.music import analysis
from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.library import MusicLibrary
from thumblab_dagster.lib.collections.music.pipeline import MusicSettings, import_table
from thumblab_dagster.lib.collections.music.scan import file_id_for
from thumblab_dagster.lib.collections.music.store import sqlalchemy_url
from thumblab_dagster.lib.collections.music.synthetic import synthesise_track
from thumblab_dagster.service.app import ServiceSettings, create_app
from thumblab_dagster.service.music import NO_DATABASE, OUTSIDE, MusicServiceSettings
from thumblab_dagster_tests.service.server import serving

GUIDE_STATISTICS = {"index_name", "index_type", "vector_dimension", "total_vectors", "indexed_vectors", "total_files",
                    "analyzed_files", "indexed_files", "index_coverage", "build_time", "faiss_available", "index_loaded"}
TRACKS = [("clicks_0.wav", "clicks", 120.0, "A", "band a"), ("clicks_1.flac", "clicks", 100.0, "E", "band b"),
          ("pads/pads_0.wav", "pads", 80.0, "C", "band a"), ("pads/pads_1.wav", "pads", 70.0, "F", "band c")]


def track(path, style="clicks", tempo=120.0, key="A", artist=None, seed=0):
    return synthesise_track(path, style=style, tempo_bpm=tempo, key=key, seconds=3.0, sample_rate=22050, seed=seed,
                            title=path.stem, artist=artist)


def database(pg_server) -> str:
    """A database of this module's own on the session's pgserver, as a SQLAlchemy URL."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"music_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return sqlalchemy_url(make_conninfo(pg_server, dbname=name)).render_as_string(hide_password=False)


def table(path, per_style: int = 10, seed: int = 1) -> pd.DataFrame:
    """Two styles in six small columns beside tempo in BPM; five artists."""
    rng = np.random.default_rng(seed)
    style = np.repeat([0, 1], per_style)
    frame = pd.DataFrame({"track_id": [f"row{i:02d}" for i in range(len(style))],
                          "artist": [f"artist {i % 5}" for i in range(len(style))],
                          **{f"timbre_{j}": np.where(style == 0, 0.3, 0.7) + rng.normal(0, 0.04, len(style))
                             for j in range(6)},
                          "tempo": rng.uniform(70, 180, len(style))})
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def music(tmp_path_factory, pg_server, clip):
    """Four tracks built through POST /api/faiss/build-index (17-d), a fifth written after the build, a
    features table imported as library ``table``; outside the folder a readable track and links to it."""
    root = tmp_path_factory.mktemp("music_api")
    folder = root / "music"
    for i, (name, style, tempo, key, artist) in enumerate(TRACKS):
        track(folder / name, style, tempo, key, artist, seed=i)
    outside = root / "outside"
    track(outside / "secret.wav", seed=9)
    os.symlink(outside / "secret.wav", folder / "escape.wav")                  # a file link leading out
    os.symlink("../outside", folder / "linked")                                 # a folder link leading out
    layout = MusicLayout.at(root / "data", publish_dir=root / "pub", music_dir=folder)
    table(root / "features.csv")
    import_table(layout, root / "features.csv", "track_id", "table")
    db_url = database(pg_server)
    settings = ServiceSettings(publish_dir=str(layout.published),
                               music=MusicServiceSettings(layout, db_url, MusicSettings(include_tensorflow=False)))
    with serving(create_app(settings, clip=clip)) as base:
        built = [post(base, "build-index", include_tensorflow="false") for _ in range(2)]   # the second: unchanged
        track(folder / "late" / "new.wav", "pads", 76.0, "D", "band d", seed=5)   # not in the library
        yield base, layout, db_url, outside, built


def get(base, path, **params):
    return requests.get(f"{base}/api/faiss/{path}", params=params, timeout=300)


def post(base, path, **params):
    return requests.post(f"{base}/api/faiss/{path}", params=params, timeout=300)


def test_build_index_publishes_and_a_second_build_is_skipped(music):
    base, layout, db_url, _, (built, again) = music
    assert built.status_code == 200, built.text
    body = built.json()
    assert body["success"] and not body["skipped"] and body["library"] == "music"
    assert (body["total_vectors"], body["indexed"], body["vector_dimension"]) == (4, 4, 17)
    assert body["index_type"] == "IndexFlatIP" and body["include_tensorflow"] is False and body["build_time"] > 0
    assert body["scan"]["new"] == 4 and body["analysis"]["analysed"] == 4 and body["failures"] == []
    assert "4 tracks indexed" in body["message"]
    assert again.status_code == 200 and again.json()["skipped"] and again.json()["indexed"] == 0
    assert "unchanged" in again.json()["message"] and again.json()["total_vectors"] == 4
    for response in (built, again):
        assert db_url not in response.text


def test_statistics_carry_the_guides_fields(music):
    base, *_ = music
    stats = get(base, "statistics")
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert GUIDE_STATISTICS <= set(body)
    assert (body["index_name"], body["index_type"], body["vector_dimension"]) == ("music", "IndexFlatIP", 17)
    # the links leading out of the folder are not files of it
    assert (body["total_files"], body["analyzed_files"], body["indexed_files"], body["total_vectors"]) == (4, 4, 4, 4)
    assert body["index_coverage"] == 1.0 and body["faiss_available"] and body["index_loaded"] and body["build_time"]
    imported = get(base, "statistics", library="table").json()
    assert (imported["total_vectors"], imported["vector_dimension"], imported["index_coverage"]) == (20, 7, 1.0)
    missing = get(base, "statistics", library="nothing_here").json()
    assert missing["index_loaded"] is False and missing["total_vectors"] == 0 and GUIDE_STATISTICS <= set(missing)


def test_similar_tracks_by_path_by_id_and_for_a_file_analysed_now(music):
    base, layout, *_ = music
    by_path = get(base, "similar-tracks", query_path="clicks_0.wav", top_n=3)
    assert by_path.status_code == 200, by_path.text
    body = by_path.json()
    own = file_id_for("clicks_0.wav")
    assert body["query"] == {"query": "clicks_0.wav", "track_id": own, "path": "clicks_0.wav", "analysed": False}
    assert body["count"] == 3 == len(body["similar_tracks"]) and body["top_n"] == 3
    assert own not in {t["id"] for t in body["similar_tracks"]}
    first = body["similar_tracks"][0]
    assert set(first) == {"id", "path", "title", "artist", "similarity"} and -1 <= first["similarity"] <= 1
    by_id = get(base, "similar-tracks", query_path=own, top_n=3).json()
    assert by_id["similar_tracks"] == body["similar_tracks"]
    fresh = get(base, "similar-tracks", query_path="late/new.wav", top_n=4).json()
    assert fresh["query"]["analysed"] and fresh["query"]["track_id"] is None and len(fresh["similar_tracks"]) == 4
    table = get(base, "similar-tracks", query_path="row00", top_n=5, library="table").json()
    assert {t["id"] for t in table["similar_tracks"]} <= {f"row{i:02d}" for i in range(1, 10)}   # its own style


def test_generate_playlist_plain_and_mmr_with_statistics(music):
    base, *_ = music
    plain = post(base, "generate-playlist", seed_track="row00", playlist_length=6, library="table")
    mmr = post(base, "generate-playlist", seed_track="row00", playlist_length=6, diversity="mmr", max_per_artist=1,
               library="table", **{"lambda": 0.3})
    assert plain.status_code == 200 and mmr.status_code == 200, (plain.text, mmr.text)
    for body in (plain.json(), mmr.json()):
        stats = body["statistics"]
        assert {"average_similarity", "min_similarity", "max_similarity", "similarity_range"} <= set(stats)
        similarities = [t["similarity"] for t in body["playlist"]]
        assert stats["min_similarity"] == min(similarities) and stats["max_similarity"] == max(similarities)
        assert body["seed_track"]["track_id"] == "row00" and body["playlist_length"] == 6
    artists = [t["artist"] for t in mmr.json()["playlist"]]
    assert len(artists) == len(set(artists))
    assert mmr.json()["statistics"]["mean_pairwise_similarity"] < plain.json()["statistics"]["mean_pairwise_similarity"]
    threshold = post(base, "generate-playlist", seed_track="clicks_0.wav", playlist_length=3, diversity="threshold",
                     diversity_threshold=-1).json()
    assert threshold["statistics"]["diversity"] == "threshold" and len(threshold["playlist"]) == 3


@pytest.mark.parametrize("params", [{"top_n": 0}, {"top_n": "ten"}, {"top_n": 10**6}])
def test_bad_numbers_are_422s_in_one_line(music, params):
    base, *_ = music
    resp = get(base, "similar-tracks", query_path="clicks_0.wav", **params)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "top_n"]


def test_bad_playlist_settings_unknown_tracks_and_libraries(music):
    base, *_ = music
    for params in ({"diversity": "random"}, {"lambda": 2}, {"diversity_threshold": "nan"}, {"max_per_artist": 0},
                   {"playlist_length": 0}):
        resp = post(base, "generate-playlist", seed_track="clicks_0.wav", **params)
        assert resp.status_code == 422, (params, resp.text)
    unknown = get(base, "similar-tracks", query_path="no-such-track")
    assert unknown.status_code == 404 and "no-such-track" not in unknown.text
    library = get(base, "similar-tracks", query_path="clicks_0.wav", library="nothing_here")
    assert library.status_code == 404 and "unknown library" in library.json()["detail"]
    unsafe = get(base, "statistics", library="../pub")
    assert unsafe.status_code == 422 and unsafe.json()["detail"][0]["loc"] == ["query", "library"]
    table_file = get(base, "similar-tracks", query_path="clicks_0.wav", library="table")
    assert table_file.status_code == 422 and "features table" in table_file.json()["detail"]


def test_extract_vector_raw_normalised_and_with_the_tags(music):
    base, layout, *_ = music
    raw = post(base, "extract-vector", file_path="clicks_0.wav", include_tensorflow="false")
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["dimension"] == 17 == len(body["vector"]) == len(body["feature_names"]) and not body["normalized"]
    assert body["analysis"]["key"] and np.all(np.isfinite(body["vector"]))
    normal = post(base, "extract-vector", file_path="clicks_0.wav", include_tensorflow="false", normalize="true").json()
    vector = np.asarray(normal["vector"])
    assert normal["normalized"] and normal["library"] == "music" and abs(np.linalg.norm(vector) - 1) < 1e-5
    library = MusicLibrary.load(layout.library("music"))
    np.testing.assert_allclose(vector, library.vector_of(file_id_for("clicks_0.wav")), atol=1e-5)
    mismatch = post(base, "extract-vector", file_path="clicks_0.wav", include_tensorflow="true", normalize="true")
    assert mismatch.status_code == 422 and "17-d" in mismatch.json()["detail"]
    tags = post(base, "extract-vector", file_path="clicks_0.wav", include_tensorflow="true").json()
    assert tags["dimension"] == 67 == len(tags["vector"]) and len(tags["analysis"]["tags"]) == 50


def test_paths_leaving_the_music_folder_are_refused_and_never_read(music, monkeypatch):
    base, _, _, outside, _ = music
    read = []
    real = analysis.analyse
    monkeypatch.setattr(analysis, "analyse", lambda path, **kw: read.append(str(path)) or real(path, **kw))
    attempts = ["../outside/secret.wav", "../x.wav", "/etc/passwd", str(outside / "secret.wav"), "escape.wav",
                "linked/secret.wav", "late/../../outside/secret.wav"]
    for path in attempts:
        for method, endpoint, params in (
                (get, "similar-tracks", {"query_path": path}),
                (post, "generate-playlist", {"seed_track": path}),
                (post, "extract-vector", {"file_path": path, "include_tensorflow": "false"})):
            resp = method(base, endpoint, **params)
            assert resp.status_code in (400, 403), (path, endpoint, resp.status_code, resp.text)
            assert resp.json()["detail"] == OUTSIDE and path not in resp.text
    assert read == []
    inside = post(base, "extract-vector", file_path="late/new.wav", include_tensorflow="false")
    assert inside.status_code == 200 and read and read[0].endswith("late/new.wav")   # the recorder does see reads


def test_a_new_import_is_served_by_the_next_request(music, tmp_path):
    base, layout, *_ = music
    table(tmp_path / "small.csv", per_style=4)
    import_table(layout, tmp_path / "small.csv", "track_id", "swapped")
    assert get(base, "statistics", library="swapped").json()["total_vectors"] == 8
    assert len(get(base, "similar-tracks", query_path="row00", top_n=20, library="swapped").json()["similar_tracks"]) == 7
    table(tmp_path / "large.csv", per_style=6)
    import_table(layout, tmp_path / "large.csv", "track_id", "swapped")
    assert get(base, "statistics", library="swapped").json()["total_vectors"] == 12
    assert len(get(base, "similar-tracks", query_path="row00", top_n=20, library="swapped").json()["similar_tracks"]) == 11


def test_an_unreachable_database_is_a_503_without_its_url(tmp_path, clip, caplog):
    url = "postgresql://music:pw-very-secret@127.0.0.1:1/music"
    layout = MusicLayout.at(tmp_path / "data", publish_dir=tmp_path / "pub", music_dir=tmp_path / "music")
    settings = ServiceSettings(publish_dir=str(layout.published), music=MusicServiceSettings(layout, url))
    with serving(create_app(settings, clip=clip)) as base:
        stats = get(base, "statistics")
        build = post(base, "build-index")
    for resp in (stats, build):
        assert resp.status_code == 503 and resp.json()["detail"] == NO_DATABASE
        assert "pw-very-secret" not in resp.text and url not in resp.text
    assert "pw-very-secret" not in caplog.text and "cannot be used" in caplog.text
