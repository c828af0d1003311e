"""``thumblab geo``: build / search / list / add / demo as a user runs them, errors as one line and exit 1."""

from __future__ import annotations

import json
import os

import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner

from thumblab_dagster.cli import main
from thumblab_dagster.lib.collections.geo.search import make_query, threshold_search
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster_tests.collections.geo.conftest import BANDS
from thumblab_dagster_tests.collections.geo.mosaics import centre_latlon, embedding_field, write_mosaic

VIEWPORT = "viewport_holes"


@pytest.fixture(scope="module")
def built(holes, tmp_path_factory):
    """The nodata mosaic (150 x 260, UTM) built and published by ``thumblab geo build`` into a temp data root."""
    root = tmp_path_factory.mktemp("cli")
    env = {"THUMBLAB_DATA_ROOT": str(root / "data"), "THUMBLAB_GEO_BANDS": str(BANDS)}
    result = CliRunner().invoke(main, ["geo", "build", str(holes.path)], env=env)
    assert result.exit_code == 0, result.output
    return holes, env, result


def run(env, *args):
    return CliRunner().invoke(main, ["geo", *map(str, args)], env=env)


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr, result.stderr


def test_build_publishes_the_viewport_and_a_second_build_changes_nothing(built):
    holes, env, first = built
    published = os.path.join(env["THUMBLAB_DATA_ROOT"], "faiss_indices", VIEWPORT)
    assert f"{VIEWPORT}: published 39,000 pixels" in first.stdout and published in first.stdout
    assert "id_map_alignment passed" in first.stdout and "preview:" in first.stdout
    files = {name: os.stat(os.path.join(published, name)).st_mtime_ns for name in os.listdir(published)}
    again = run(env, "build", holes.path)
    assert again.exit_code == 0 and "is unchanged" in again.stdout
    assert {name: os.stat(os.path.join(published, name)).st_mtime_ns for name in os.listdir(published)} == files


def test_search_by_place_answers_as_the_library_does_with_geojson(built, tmp_path):
    holes, env, _ = built
    lat, lon = centre_latlon(holes.path, [90], [200])
    geojson = tmp_path / "hits.geojson"
    result = run(env, "search", VIEWPORT, "--lat", lat[0], "--lon", lon[0], "--threshold", 0.95,
                 "--limit", 7, "--geojson", geojson, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    store = PixelStore(os.path.join(env["THUMBLAB_DATA_ROOT"], "faiss_indices", VIEWPORT))
    expected = threshold_search(store, make_query(store, lat=lat[0], lon=lon[0]), 0.95, limit=7).to_json()
    assert answer == json.loads(json.dumps(expected))
    assert answer["results"][0]["row"] == 90 and answer["results"][0]["col"] == 200
    assert answer["results"][0]["similarity"] == 1.0 and answer["count"] >= len(answer["results"]) == 7
    features = json.loads(geojson.read_text())
    assert features["type"] == "FeatureCollection" and features["count"] == answer["count"]
    assert len(features["features"]) == 7
    readable = run(env, "search", VIEWPORT, "--lat", lat[0], "--lon", lon[0], "--threshold", 0.95, "--limit", 3)
    assert readable.exit_code == 0 and f"{answer['count']:,} pixels with similarity >= 0.95" in readable.stdout
    assert "(row 90, col 200)  similarity 1.0000" in readable.stdout


def test_search_by_vector_file(built, tmp_path):
    holes, env, _ = built
    vector = holes.values[:, 90, 200].astype(np.float64)
    np.save(tmp_path / "q.npy", vector)
    (tmp_path / "q.json").write_text(json.dumps(vector.tolist()))
    (tmp_path / "q.txt").write_text(" ".join(str(v) for v in vector))
    answers = []
    for name in ("q.npy", "q.json", "q.txt"):
        result = run(env, "search", VIEWPORT, "--vector", tmp_path / name, "--threshold", 0.9, "--limit", 3, "--json")
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1] == answers[2] and answers[0]["results"][0]["similarity"] == 1.0


def test_list_shows_published_viewports_and_mosaics_not_built_yet(built):
    holes, env, _ = built
    mosaics = os.path.join(env["THUMBLAB_DATA_ROOT"], "mosaics")
    os.makedirs(mosaics, exist_ok=True)
    os.symlink(holes.path, os.path.join(mosaics, "viewport_waiting.tif"))
    listed = json.loads(run(env, "list", "--json").stdout)
    rows = {row["viewport_id"]: row for row in listed["viewports"]}
    assert rows[VIEWPORT]["published"] and rows[VIEWPORT]["pixels"] == 150 * 260
    assert rows[VIEWPORT]["nodata_pixels"] == int(holes.nodata.sum()) and rows[VIEWPORT]["bands"] == BANDS
    assert rows["viewport_waiting"] == {"viewport_id": "viewport_waiting", "published": False,
                                        "mosaic": os.path.join(mosaics, "viewport_waiting.tif")}
    table = run(env, "list").stdout
    assert VIEWPORT in table and "150 x 260" in table and "not built" in table


def test_search_errors_are_one_line_and_exit_1(built, tmp_path):
    holes, env, _ = built
    one_line_error(run(env, "search", "viewport_nowhere", "--lat", 13, "--lon", 77, "--threshold", 0.9),
                   "unknown viewport viewport_nowhere", VIEWPORT)
    one_line_error(run(env, "search", "../etc", "--lat", 13, "--lon", 77, "--threshold", 0.9), "not a safe name")
    one_line_error(run(env, "search", VIEWPORT, "--lat", 13.0, "--lon", 10.0, "--threshold", 0.9),
                   "outside viewport viewport_holes", "pick a point inside")
    rows, cols = np.nonzero(holes.nodata)
    lat, lon = centre_latlon(holes.path, rows[:1], cols[:1])
    one_line_error(run(env, "search", VIEWPORT, "--lat", f"{lat[0]:.9f}", "--lon", f"{lon[0]:.9f}", "--threshold", 0.9),
                   "is a nodata pixel")
    (tmp_path / "short.json").write_text("[1, 2, 3]")
    one_line_error(run(env, "search", VIEWPORT, "--vector", tmp_path / "short.json", "--threshold", 0.9),
                   "3 values", f"{BANDS} bands")
    (tmp_path / "junk.txt").write_text("one two")
    one_line_error(run(env, "search", VIEWPORT, "--vector", tmp_path / "junk.txt", "--threshold", 0.9), "junk.txt")
    one_line_error(run(env, "search", VIEWPORT, "--threshold", 0.9), "--lat and --lon together, or --vector")
    one_line_error(run(env, "search", VIEWPORT, "--lat", 13, "--threshold", 0.9), "--lat and --lon together")
    lat, lon = centre_latlon(holes.path, [90], [200])
    one_line_error(run(env, "search", VIEWPORT, "--lat", lat[0], "--lon", lon[0], "--threshold", 2),
                   "threshold must be a cosine similarity")


def test_build_errors_are_one_line_and_exit_1(built, tmp_path):
    holes, env, _ = built
    one_line_error(run({**env, "THUMBLAB_GEO_BANDS": "128"}, "build", holes.path), "has 16 bands, expected 128")
    one_line_error(run(env, "build", tmp_path / "missing.tif"), "no such file")
    one_line_error(run(env, "build", holes.path, "--viewport-id", "a/b"), "--viewport-id", "not a safe name")
    one_line_error(run({**env, "THUMBLAB_GEO_SAMPLING_FACTOR": "0"}, "build", holes.path),
                   "THUMBLAB_GEO_SAMPLING_FACTOR='0'")


def test_add_links_the_mosaic_in_and_adds_the_partition(tmp_path):
    values = np.rint(embedding_field(40, 50, BANDS, seed=9)).astype(np.uint8)
    (tmp_path / "downloads").mkdir()
    source = write_mosaic(tmp_path / "downloads" / "tile.tif", values)
    other = write_mosaic(tmp_path / "downloads" / "other.tif", values[:, ::-1].copy())
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path / "data"), "THUMBLAB_GEO_BANDS": str(BANDS), "DAGSTER_HOME": str(home)}
    added = run(env, "add", source, "--viewport-id", "viewport_13.0_77.5")
    assert added.exit_code == 0, added.output
    link = tmp_path / "data" / "mosaics" / "viewport_13.0_77.5.tif"
    assert link.is_symlink() and link.resolve() == source.resolve() and "partition added" in added.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_dynamic_partitions("viewports") == ["viewport_13.0_77.5"]
    again = run(env, "add", source, "--viewport-id", "viewport_13.0_77.5")
    assert again.exit_code == 0 and "already there" in again.stdout
    one_line_error(run(env, "add", other, "--viewport-id", "viewport_13.0_77.5"), "already holds another mosaic")
    copied = run(env, "add", other, "--copy")                    # the id from the file name; a real copy
    assert copied.exit_code == 0 and (tmp_path / "data" / "mosaics" / "other.tif").is_file()
    assert not (tmp_path / "data" / "mosaics" / "other.tif").is_symlink()
    one_line_error(run({k: v for k, v in env.items() if k != "DAGSTER_HOME"} | {"DAGSTER_HOME": ""}, "add", source),
                   "DAGSTER_HOME is not set")
    one_line_error(run(env, "add", tmp_path / "downloads" / "nothing.tif"), "no such file")


def test_demo_builds_and_searches_a_synthetic_mosaic(tmp_path):
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path / "data")}
    result = run(env, "demo")
    assert result.exit_code == 0, result.output
    assert "viewport_demo: published 120,000 pixels" in result.stdout
    assert "$ thumblab geo search viewport_demo --lat" in result.stdout
    assert "(row 150, col 200)  similarity 1.0000" in result.stdout
    assert "is unchanged" in run(env, "demo").stdout           # the second demo reuses what it built


def test_a_failed_alignment_check_names_each_problem_and_exits_1(holes, tmp_path, monkeypatch):
    """The blocking check refused the build (here a stand-in for build_viewport raising what it raises): the
    reason, then each problem on its own line; exit 1."""
    from thumblab_dagster.lib.collections.geo import pipeline
    from thumblab_dagster.lib.engine.validate import AlignmentReport

    def refuse(*args, **kwargs):
        raise pipeline.AlignmentFailed(VIEWPORT, AlignmentReport(False, ["position 7: stored pixel differs",
                                                                         "count: 10 ids, 9 vectors"]))

    monkeypatch.setattr(pipeline, "build_viewport", refuse)
    result = run({"THUMBLAB_DATA_ROOT": str(tmp_path / "data"), "THUMBLAB_GEO_BANDS": str(BANDS)},
                 "build", holes.path)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"error: viewport {VIEWPORT} failed id_map_alignment, nothing published: position 7: stored pixel differs; "
        "count: 10 ids, 9 vectors",
        "  - position 7: stored pixel differs", "  - count: 10 ids, 9 vectors"]
