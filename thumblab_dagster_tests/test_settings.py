"""Every setting declared once (lib/settings.py): its parsing, its one-line errors, and the places it reaches."""

import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from PIL import Image

from thumblab_dagster.cli import main
from thumblab_dagster.defs import resources as res
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.collections.thumbnails.pipeline import FetchSettings, IndexSettings, SourceSettings
from thumblab_dagster.lib.collections.thumbnails.remote import SupabaseSettings
from thumblab_dagster.lib.embed.untrusted_fetch import FetchPolicy
from thumblab_dagster.lib.engine.build import DEFAULT_MEMORY_BUDGET
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL
from thumblab_dagster.lib.settings import CORE, SETTING, SETTINGS, SUPABASE, SettingsError, load_settings, markdown_table
from thumblab_dagster.service.app import ServiceSettings

README = Path(__file__).resolve().parents[1] / "README.md"
SECRET = "hunter2-secret"


@pytest.mark.parametrize("env, value, line", [
    ("YOUTUBE_REGION_CODE", "USA", "YOUTUBE_REGION_CODE='USA': use a two-letter ISO 3166-1 code such as US"),
    ("THUMBLAB_CLIP_DEVICE", "tpu", "THUMBLAB_CLIP_DEVICE='tpu': use auto, cpu, cuda, cuda:N or mps"),
    ("THUMBLAB_CLIP_DEVICE", "cuda:x", "THUMBLAB_CLIP_DEVICE='cuda:x': use auto, cpu, cuda, cuda:N or mps"),
    ("YOUTUBE_MAX_RESULTS", "501", "YOUTUBE_MAX_RESULTS='501': use a whole number from 1 to 500"),
    ("YOUTUBE_MAX_RESULTS", "2.5", "YOUTUBE_MAX_RESULTS='2.5': use a whole number from 1 to 500"),
    ("YOUTUBE_API_BASE_URL", "googleapis.com", "YOUTUBE_API_BASE_URL='googleapis.com': use an http(s) URL such as "
                                               "https://www.googleapis.com/youtube/v3"),
    ("THUMBLAB_CLIP_BATCH_SIZE", "0", "THUMBLAB_CLIP_BATCH_SIZE='0': use a whole number of at least 1"),
    ("THUMBLAB_FETCH_WORKERS", "65", "THUMBLAB_FETCH_WORKERS='65': use a whole number from 1 to 64"),
    ("THUMBLAB_INDEX_MEMORY_MB", "2GB", "THUMBLAB_INDEX_MEMORY_MB='2GB': use a whole number of at least 1"),
    ("THUMBLAB_INDEX_TARGET_RECALL", "1.5", "THUMBLAB_INDEX_TARGET_RECALL='1.5': use a number above 0 and at most 1"),
    ("THUMBLAB_INDEX_TARGET_RECALL", "nan", "THUMBLAB_INDEX_TARGET_RECALL='nan': use a number above 0 and at most 1"),
    ("THUMBLAB_FETCH_TIMEOUT_S", "inf", "THUMBLAB_FETCH_TIMEOUT_S='inf': use a positive number of seconds such as 5"),
    ("THUMBLAB_SUPABASE_RETENTION_DAYS", "-1", "THUMBLAB_SUPABASE_RETENTION_DAYS='-1': use a whole number of at least 1"),
    ("THUMBLAB_INDEX_SOURCE", "s3", "THUMBLAB_INDEX_SOURCE='s3': use parquet or supabase"),
    ("SUPABASE_URL", "project.supabase.co", "SUPABASE_URL='project.supabase.co': use the project's URL such as "
                                            "https://<project>.supabase.co"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_what_to_use(env, value, line):
    with pytest.raises(SettingsError) as raised:
        load_settings({env: value})
    assert str(raised.value) == line and "\n" not in line


def test_a_bad_secret_is_named_but_never_shown():
    with pytest.raises(SettingsError) as raised:
        load_settings({"THUMBLAB_INDEX_UPLOAD_URL": f"user:{SECRET}@bucket"})
    assert str(raised.value).startswith("THUMBLAB_INDEX_UPLOAD_URL: use a URL such as supabase://")
    assert SECRET not in str(raised.value)
    given = load_settings({"YOUTUBE_API_KEY": SECRET, "SUPABASE_KEY": SECRET, "THUMBLAB_INTERNAL_TOKEN": SECRET})
    assert given.youtube_api_key == SECRET and SECRET not in repr(given)
    assert {s.env for s in SETTINGS if s.secret} == {"YOUTUBE_API_KEY", "THUMBLAB_INTERNAL_TOKEN", "SUPABASE_DB_URL",
                                                     "SUPABASE_KEY", "THUMBLAB_INDEX_UPLOAD_URL", "THUMBLAB_MUSIC_DB_URL"}


def test_several_bad_values_are_still_one_line():
    with pytest.raises(SettingsError) as raised:
        load_settings({"YOUTUBE_REGION_CODE": "USA", "THUMBLAB_CLIP_DEVICE": "tpu"})
    assert "\n" not in str(raised.value)
    assert "YOUTUBE_REGION_CODE='USA'" in str(raised.value) and "THUMBLAB_CLIP_DEVICE='tpu'" in str(raised.value)


def test_values_are_normalised_and_blank_means_the_default():
    given = load_settings({"YOUTUBE_REGION_CODE": " gb ", "THUMBLAB_CLIP_DEVICE": "CUDA:1", "THUMBLAB_INDEX_SOURCE": "Parquet",
                           "YOUTUBE_MAX_RESULTS": " 50 ", "THUMBLAB_FETCH_ALLOW_PRIVATE": " 127.0.0.1, ,localhost,",
                           "THUMBLAB_PUBLISH_DIR": "  ", "THUMBLAB_INDEX_TARGET_RECALL": "0.99"})
    assert (given.youtube_region_code, given.clip_device, given.index_source) == ("GB", "cuda:1", "parquet")
    assert given.youtube_max_results == 50 and given.index_target_recall == 0.99
    assert given.fetch_allow_private == ("127.0.0.1", "localhost") and given.publish_dir is None


def test_an_empty_environment_gives_the_defaults_everywhere():
    # the resources, the pipeline's dataclasses and lib/'s constants take their defaults from lib/settings.py
    given = load_settings({})
    assert all(getattr(given, s.name) == s.default for s in SETTINGS)
    assert res.TrendingSourceResource().settings == SourceSettings()
    assert res.ThumbnailFetchResource().settings == FetchSettings()
    assert res.IndexEngineResource().settings == IndexSettings()
    assert FetchPolicy.from_env({}) == FetchPolicy()
    assert DataLayout.from_env({}) == DataLayout.at(given.data_root)
    # the engine is generic and keeps its own defaults for direct callers: they must say the same thing
    assert given.index_memory_mb * 2**20 == DEFAULT_MEMORY_BUDGET and given.index_target_recall == DEFAULT_TARGET_RECALL


def test_resources_from_an_empty_environment_are_the_default_resources():
    resources = res.resources_from_env({})
    assert set(resources) == {"storage", "trending_source", "embedder", "thumbnail_fetch", "index_engine", "geo",
                              "music", "catalogue"}
    for key, resource in resources.items():
        default = res.RESOURCES[key]()
        assert resource == default, key


def test_every_resource_field_has_the_settings_default_bounds_and_doc():
    for setting in SETTINGS:
        if setting.target and not setting.target.startswith("("):
            key, name = setting.target.split(".")
            field = res.RESOURCES[key].model_fields[name]
            assert setting.env in field.description, setting.env
            if key != "index_upload":  # the upload URL is required: without one there is no upload resource
                assert field.default == setting.default, setting.env
    with pytest.raises(Exception, match="pattern"):  # the launchpad gets the same bounds as the environment
        res.ClipEmbedderResource(device="tpu")
    with pytest.raises(Exception, match="less than or equal to 500"):
        res.TrendingSourceResource(max_results=501)


def test_resources_bind_every_secret_by_name():
    env = {"YOUTUBE_API_KEY": SECRET, "SUPABASE_URL": "http://127.0.0.1:9/", "SUPABASE_KEY": SECRET,
           "SUPABASE_DB_URL": f"postgresql://u:{SECRET}@127.0.0.1:9/db", "THUMBLAB_INDEX_UPLOAD_URL": "file:///tmp/up",
           "THUMBLAB_SUPABASE_RETENTION_DAYS": "30", "THUMBLAB_INDEX_SOURCE": "supabase"}
    resources = res.resources_from_env(env)
    assert resources["trending_source"].api_key == dg.EnvVar("YOUTUBE_API_KEY")
    assert resources["supabase"].key == dg.EnvVar("SUPABASE_KEY")
    assert resources["supabase"].db_url == dg.EnvVar("SUPABASE_DB_URL")
    assert resources["index_upload"].url == dg.EnvVar("THUMBLAB_INDEX_UPLOAD_URL")
    assert resources["supabase"].url == "http://127.0.0.1:9/" and resources["supabase"].retention_days == 30
    assert resources["index_engine"].source == "supabase" and resources["index_engine"].supabase is not None
    assert SECRET not in repr(resources)
    with pytest.raises(SettingsError, match="set both SUPABASE_URL and SUPABASE_KEY"):
        res.resources_from_env({"SUPABASE_URL": "http://127.0.0.1:9/"})


def test_the_service_parses_the_environment_once(monkeypatch):
    from thumblab_dagster.service import app

    calls = []
    monkeypatch.setattr(app, "load_settings", lambda environ=None: calls.append(environ) or load_settings(environ))
    for helper in ("lib.collections.thumbnails.layout", "lib.collections.thumbnails.remote", "lib.embed.untrusted_fetch"):
        monkeypatch.setattr(f"thumblab_dagster.{helper}.load_settings", lambda environ=None: pytest.fail("parsed again"))
    ServiceSettings.from_env({"SUPABASE_DB_URL": "postgresql://h/db"})
    assert len(calls) == 1


def test_the_service_and_the_query_side_read_the_same_settings(tmp_path):
    env = {"THUMBLAB_DATA_ROOT": str(tmp_path), "THUMBLAB_CLIP_MODEL": "ViT-B-16", "THUMBLAB_CLIP_DEVICE": "cpu",
           "THUMBLAB_INTERNAL_TOKEN": SECRET, "THUMBLAB_FETCH_TIMEOUT_S": "2", "SUPABASE_DB_URL": "postgresql://h/db"}
    service = ServiceSettings.from_env(env)
    assert service.publish_dir == str(tmp_path / "faiss_indices") and service.clip_model == "ViT-B-16"
    assert (service.clip_device, service.internal_token, service.fetch.read_timeout_s) == ("cpu", SECRET, 2.0)
    assert service.supabase == SupabaseSettings(db_url="postgresql://h/db") and SECRET not in repr(service)
    with pytest.raises(SettingsError, match=r"^THUMBLAB_FETCH_ALLOW_PRIVATE='10.0.0.0/8,not a host': 'not a host' is "
                                            r"not a host name, IP address or CIDR: use comma-separated"):
        ServiceSettings.from_env({"THUMBLAB_FETCH_ALLOW_PRIVATE": "10.0.0.0/8, not a host"})


def test_no_other_module_names_a_variable():
    # a variable's name appears once, in lib/settings.py; DAGSTER_HOME is Dagster's own (the demo defaults it)
    package = Path(res.__file__).resolve().parents[1]
    names = {s.env for s in SETTINGS} - {"DAGSTER_HOME"}
    found = [f"{path.relative_to(package)}:{node.lineno}: {node.value}" for path in sorted(package.rglob("*.py"))
             if path != package / "lib" / "settings.py"
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant) and node.value in names]
    assert found == []


def test_the_readme_tables_are_the_declared_settings():
    readme = README.read_text()
    for section in (CORE, SUPABASE):
        table = markdown_table(section)
        # a table ends at a blank line: a row added or dropped by hand breaks the match
        assert f"\n\n{table}\n\n" in readme, f"README's {section} table differs: paste markdown_table({section!r})"
    assert all(f"`{s.env}`" in markdown_table(s.section) for s in SETTINGS)
    assert SETTING["clip_device"].env in markdown_table(CORE)


@pytest.fixture
def upload(tmp_path):
    path = tmp_path / "upload.png"
    Image.new("RGB", (32, 32), "red").save(path)
    return str(path)


@pytest.mark.parametrize("command", ["score", "similar"])
def test_the_cli_stops_on_a_bad_setting_with_one_line(upload, command):
    result = CliRunner().invoke(main, [command, upload], env={"THUMBLAB_CLIP_DEVICE": "tpu"})
    assert result.exit_code == 1
    assert result.stderr == "error: THUMBLAB_CLIP_DEVICE='tpu': use auto, cpu, cuda, cuda:N or mps\n"


def test_stats_and_serve_stop_on_a_bad_setting_with_one_line(tmp_path):
    stats = CliRunner().invoke(main, ["stats"], env={"THUMBLAB_DATA_ROOT": str(tmp_path), "YOUTUBE_REGION_CODE": "USA"})
    assert (stats.exit_code, stats.stderr) == (1, "error: YOUTUBE_REGION_CODE='USA': use a two-letter ISO 3166-1 "
                                                  "code such as US\n")
    serve = CliRunner().invoke(main, ["serve", "--port", "0"], env={"THUMBLAB_FETCH_MAX_BYTES": "5MB"})
    assert (serve.exit_code, serve.stderr) == (1, "error: THUMBLAB_FETCH_MAX_BYTES='5MB': use a positive whole number "
                                                  "of bytes such as 5242880\n")


@pytest.mark.parametrize("env, line", [
    ({"YOUTUBE_REGION_CODE": "USA"}, "error: YOUTUBE_REGION_CODE='USA': use a two-letter ISO 3166-1 code such as US\n"),
    ({"SUPABASE_URL": "http://127.0.0.1:9/", "SUPABASE_KEY": None, "SUPABASE_DB_URL": None},
     "error: set both SUPABASE_URL and SUPABASE_KEY (or neither)\n"),
])
def test_the_demo_stops_on_a_bad_setting_with_one_line_before_running_anything(tmp_path, monkeypatch, env, line):
    # what `make demo` prints: the line, not a traceback through build_definitions
    monkeypatch.setattr("thumblab_dagster.demo.run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    result = CliRunner().invoke(main, ["demo"], env={"DAGSTER_HOME": str(tmp_path / "home"), **env})
    assert (result.exit_code, result.stderr, result.stdout) == (1, line, "")
    assert not (tmp_path / "home").exists()


def test_the_code_location_shows_the_line_when_it_loads(tmp_path):
    # what `dagster dev` / `dg check defs` show for a bad value: the line first, not a pydantic or torch traceback
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "thumblab_dagster.definitions"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                               "THUMBLAB_CLIP_DEVICE": "tpu"})
    assert proc.returncode != 0
    assert ("thumblab_dagster.lib.settings.SettingsError: THUMBLAB_CLIP_DEVICE='tpu': use auto, cpu, cuda, cuda:N or mps"
            in (proc.stdout + proc.stderr).splitlines())
