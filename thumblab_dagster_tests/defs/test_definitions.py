import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

import thumblab_dagster
from thumblab_dagster.definitions import build_definitions, defs
from thumblab_dagster.defs.resources import resources_from_env

LIB = Path(thumblab_dagster.__file__).parent / "lib"


def test_definitions_load_with_everything_in_place():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    thumbnails = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert thumbnails == {"trending_videos", "thumbnail_embeddings", "niche_index", "published_index", "index_stats"}
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == {"thumbnails"}
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {"id_map_alignment", "index_recall", "embeddings_valid", "embedding_weights_pretrained", "trending_not_empty"}
    job = defs.resolve_job_def("daily_refresh")
    assert {n.name for n in job.nodes} >= {"trending_videos", "niche_index", "niche_index_id_map_alignment"}


def test_lib_never_imports_dagster():
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] == "dagster"], f"{path} imports dagster"
    code = ("import sys, thumblab_dagster.lib.collections.thumbnails.pipeline, thumblab_dagster.lib.engine.index_dir; "
            "print('dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_source_follows_the_environment_and_hides_the_key():
    assert resources_from_env({})["trending_source"].settings.kind == "sample"
    env = {"YOUTUBE_API_KEY": "k-123", "YOUTUBE_API_BASE_URL": "http://127.0.0.1:1/yt", "THUMBLAB_DATA_ROOT": "/tmp/x"}
    resources = resources_from_env(env)
    # The key is bound as an environment variable, so the UI shows its name, not its value.
    assert resources["trending_source"].api_key == dg.EnvVar("YOUTUBE_API_KEY")
    assert resources["trending_source"].base_url == "http://127.0.0.1:1/yt"
    assert resources["storage"].data_root == "/tmp/x"
    dg.Definitions.validate_loadable(build_definitions(resources))


def test_bad_settings_and_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="YOUTUBE_MAX_RESULTS='abc' is not a whole number"):
        resources_from_env({"YOUTUBE_MAX_RESULTS": "abc"})
    from thumblab_dagster.cli import main

    bad_date = CliRunner().invoke(main, ["demo", "--date", "2026-13-01"])
    assert bad_date.exit_code == 2 and "is not a partition date" in bad_date.output
    bad_niche = CliRunner().invoke(main, ["demo", "--niche", "cooking"])
    assert bad_niche.exit_code == 2 and "'cooking' is not one of" in bad_niche.output
