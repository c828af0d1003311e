"""The code location loads as a user's tools load it: every asset, check, job and schedule in its group."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from thumblab_dagster.definitions import build_definitions, defs
from thumblab_dagster.defs.resources import IndexUploadResource, resources_from_env

ROOT = Path(__file__).resolve().parents[2]
THUMBNAIL_ASSETS = {"trending_videos", "thumbnail_embeddings", "niche_index", "published_index", "index_stats"}
THUMBNAIL_CHECKS = {"id_map_alignment", "index_recall", "embeddings_valid", "embedding_weights_pretrained",
                    "trending_not_empty", "enough_references"}
GEO_ASSETS = {"pixel_store", "pixel_index", "published_viewport", "viewport_stats", "viewport_preview"}
GEO_CHECKS = {"id_map_alignment", "index_recall"}   # the shared tail's, on pixel_index
MUSIC_ASSETS = {"music_files", "track_analysis", "music_index", "published_music_library", "music_library_stats"}
CATALOGUE_ASSETS = {"catalogue_products", "product_embeddings", "catalogue_index", "published_catalogue",
                    "catalogue_stats"}
GROUPS = {**dict.fromkeys(THUMBNAIL_ASSETS, "thumbnails"), **dict.fromkeys(GEO_ASSETS, "geo"),
          **dict.fromkeys(MUSIC_ASSETS, "music"), **dict.fromkeys(CATALOGUE_ASSETS, "catalogue")}


def test_every_asset_check_job_and_schedule_loads_in_its_group():
    loaded = build_definitions(resources_from_env({}))
    dg.Definitions.validate_loadable(loaded)
    graph = loaded.resolve_asset_graph()
    assert {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()} == GROUPS
    assert {graph.get(k).owners[0] for k in graph.get_all_asset_keys()} == {"team:thumblab"}
    assert {k.name for k in graph.asset_check_keys} == THUMBNAIL_CHECKS | GEO_CHECKS
    blocking = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys
                if graph.get_check_spec(k).blocking}
    assert blocking == {("niche_index", "id_map_alignment"), ("thumbnail_embeddings", "embeddings_valid"),
                        ("pixel_index", "id_map_alignment"), ("music_index", "id_map_alignment"),
                        ("catalogue_index", "id_map_alignment")}
    job = loaded.resolve_job_def("daily_refresh")
    assert {n.name for n in job.nodes} >= {"trending_videos", "niche_index", "niche_index_id_map_alignment"}
    schedule = loaded.resolve_schedule_def("daily_refresh_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "Australia/Hobart"
    assert "03:00 Australia/Hobart" in schedule.description


def test_the_upload_joins_only_when_configured(tmp_path):
    resources = {**resources_from_env({}), "index_upload": IndexUploadResource(url=f"file://{tmp_path}/up")}
    keys = {k.to_user_string() for k in build_definitions(resources).resolve_asset_graph().get_all_asset_keys()}
    assert keys == THUMBNAIL_ASSETS | GEO_ASSETS | MUSIC_ASSETS | CATALOGUE_ASSETS | {
        "uploaded_index", "uploaded_viewport", "uploaded_music_library"}


def instance_env(tmp_path) -> dict:
    """A fresh, empty Dagster instance for the tools (`make test` points DAGSTER_HOME at the project's)."""
    return {**os.environ, "DAGSTER_HOME": str(tmp_path)}


def test_the_entry_point_is_lazy_definitions_for_dagster_and_dg(tmp_path):
    # workspace.yaml and [tool.dagster] name thumblab_dagster.definitions; its `defs` is @dg.definitions
    assert callable(defs)
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "thumblab_dagster.definitions"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=instance_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_dg_checks_and_lists_the_thumbnails_group(tmp_path):
    dg_cli = Path(sys.executable).parent / "dg"
    check = subprocess.run([str(dg_cli), "check", "defs"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env=instance_env(tmp_path))
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run([str(dg_cli), "list", "defs", "--json"], capture_output=True, text=True, cwd=ROOT,
                            timeout=300, env=instance_env(tmp_path))
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert {a["asset_key"]: a["group_name"] for a in found["assets"]} == GROUPS
    assert {c["name"] for c in found["asset_checks"]} == THUMBNAIL_CHECKS | GEO_CHECKS
    assert sorted(j["name"] for j in found["jobs"]) == ["build_catalogue", "build_music_library", "build_viewport",
                                                        "daily_refresh", "rebuild_indices"]
    assert [(s["name"], s["cron_schedule"]) for s in found["schedules"]] == [("daily_refresh_schedule", "0 3 * * *")]
    assert sorted(s["name"] for s in found["sensors"]) == ["music_folder", "viewport_mosaics"]
