"""The shared index tail's shape, and the code location from an installed (non-editable) copy."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from thumblab_dagster.defs.index_tail import IndexTail, index_tail
from thumblab_dagster.defs.resources import IndexEngineResource, IndexUploadResource, StorageResource
from thumblab_dagster.defs.thumbnails.index import thumbnail_index_tail

ROOT = Path(__file__).resolve().parents[2]


def not_run(context):  # the shape is all these tests look at; nothing here is executed
    raise AssertionError("not executed in a shape test")


def test_a_second_collection_gets_its_own_names_and_loads_beside_thumbnails():
    geo = IndexTail(group="geo", partitions_def=None, index_deps=[], build=not_run, check_alignment=not_run,
                    check_recall=not_run, publish=not_run, measure=not_run, upload=not_run)
    geo_assets, geo_checks = index_tail(geo, with_upload=True)
    thumb_assets, thumb_checks = index_tail(thumbnail_index_tail(), with_upload=True)
    names = lambda assets: {a.key.to_user_string() for a in assets}  # noqa: E731
    assert names(geo_assets) == {"geo_index", "geo_published_index", "geo_index_stats", "geo_uploaded_index"}
    assert names(thumb_assets) == {"niche_index", "published_index", "index_stats", "uploaded_index"}
    resources = {"storage": StorageResource(), "index_engine": IndexEngineResource(),
                 "index_upload": IndexUploadResource(url="file:///nowhere")}
    both = dg.Definitions(assets=[*geo_assets, *thumb_assets], asset_checks=[*geo_checks, *thumb_checks],
                          resources=resources)
    graph = both.resolve_asset_graph()
    assert {k.asset_key.to_user_string() for k in graph.asset_check_keys if k.name == "id_map_alignment"} == \
        {"geo_index", "niche_index"}
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys if k.name == "id_map_alignment")


def test_an_installed_copy_loads_without_the_checkout(tmp_path):
    # A wheel in site-packages has no pyproject.toml above it: the defs folder must still load.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
    assert not (target / "thumblab_dagster_tests").exists()  # tests are not shipped
    code = ("import thumblab_dagster, thumblab_dagster.definitions as d; "
            "g = d.build_definitions().resolve_asset_graph(); "
            "print(thumblab_dagster.__file__); print(len(g.get_all_asset_keys()), len(g.asset_check_keys))")
    env = {**os.environ, "PYTHONPATH": str(target), "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    location, counts = out.stdout.split("\n")[:2]
    assert location.startswith(str(target)) and counts == "20 12"   # thumbnails 5 + 6, geo 5 + 2, music 5 + 2, catalogue 5 + 2
