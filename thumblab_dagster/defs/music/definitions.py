"""The music collection's definitions: music_files, track_analysis, the shared index tail, the job and sensor."""

from __future__ import annotations

import dagster as dg

from thumblab_dagster.defs.bound import bound_resources
from thumblab_dagster.defs.music.assets import music_files, track_analysis
from thumblab_dagster.defs.music.index import music_index_defs
from thumblab_dagster.defs.music.sensors import build_music_library, music_folder
from thumblab_dagster.defs.resources import from_settings
from thumblab_dagster.lib.settings import load_settings


def music_definitions(resources: dict) -> dg.Definitions:
    """Everything of the music collection, shaped by what is configured (the upload)."""
    index_assets, index_checks = music_index_defs(with_upload="index_upload" in resources)
    # Resources put together by hand (tests, tools) may leave music out: it then takes the environment's settings.
    own = {} if "music" in resources else {"music": from_settings("music", load_settings())}
    return dg.Definitions(assets=[music_files, track_analysis, *index_assets], asset_checks=index_checks,
                          jobs=[build_music_library], sensors=[music_folder], resources=own)


@dg.definitions
def defs() -> dg.Definitions:
    return music_definitions(bound_resources())
