import dagster as dg
import pytest
from click.testing import CliRunner

from thumblab_dagster.definitions import build_definitions
from thumblab_dagster.defs.resources import resources_from_env
from thumblab_dagster.lib.settings import SettingsError


def test_source_follows_the_environment_and_hides_the_key():
    assert resources_from_env({})["trending_source"].settings.kind == "sample"
    env = {"YOUTUBE_API_KEY": "k-123", "YOUTUBE_API_BASE_URL": "http://127.0.0.1:1/yt", "THUMBLAB_DATA_ROOT": "/tmp/x",
           "YOUTUBE_REGION_CODE": "gb", "THUMBLAB_CLIP_DEVICE": "cpu", "THUMBLAB_INDEX_TARGET_RECALL": "0.9"}
    resources = resources_from_env(env)
    # The key is bound as an environment variable, so the UI shows its name, not its value.
    assert resources["trending_source"].api_key == dg.EnvVar("YOUTUBE_API_KEY")
    assert resources["trending_source"].base_url == "http://127.0.0.1:1/yt"
    assert resources["trending_source"].settings.region_code == "GB"
    assert resources["storage"].data_root == "/tmp/x"
    assert resources["embedder"].device == "cpu" and resources["index_engine"].target_recall == 0.9
    dg.Definitions.validate_loadable(build_definitions(resources))


def test_bad_settings_and_arguments_get_clear_errors():
    # one line naming the variable, its value and what to use (not a pydantic or torch traceback)
    for env, line in [({"YOUTUBE_MAX_RESULTS": "abc"}, "YOUTUBE_MAX_RESULTS='abc': use a whole number from 1 to 500"),
                      ({"YOUTUBE_REGION_CODE": "USA"}, "YOUTUBE_REGION_CODE='USA': use a two-letter ISO 3166-1 code such as US"),
                      ({"THUMBLAB_CLIP_DEVICE": "tpu"}, "THUMBLAB_CLIP_DEVICE='tpu': use auto, cpu, cuda, cuda:N or mps"),
                      ({"THUMBLAB_INDEX_SOURCE": "supabase"},
                       "THUMBLAB_INDEX_SOURCE=supabase needs SUPABASE_DB_URL, or SUPABASE_URL and SUPABASE_KEY")]:
        with pytest.raises(SettingsError) as raised:
            resources_from_env(env)
        assert str(raised.value) == line
    from thumblab_dagster.cli import main

    bad_date = CliRunner().invoke(main, ["demo", "--date", "2026-13-01"])
    assert bad_date.exit_code == 2 and "is not a partition date" in bad_date.output
    bad_niche = CliRunner().invoke(main, ["demo", "--niche", "cooking"])
    assert bad_niche.exit_code == 2 and "'cooking' is not one of" in bad_niche.output
