"""The music job in Dagster: scan -> analysis -> index -> blocking check -> publish -> stats, the skip when
nothing changed, progress in the event log, and the folder sensor."""

from __future__ import annotations

import dagster as dg
import pytest

from thumblab_dagster.defs.music.definitions import music_definitions
from thumblab_dagster.defs.resources import IndexEngineResource, MusicResource, StorageResource
from thumblab_dagster.lib.collections.music.layout import MusicLayout
from thumblab_dagster.lib.collections.music.store import sqlalchemy_url
from thumblab_dagster.lib.collections.music.synthetic import synthesise_track


def write_tracks(folder, count: int = 4) -> None:
    for i in range(count):
        style = "clicks" if i % 2 else "pads"
        synthesise_track(folder / f"{style}_{i}.wav", seconds=3.0, tempo_bpm=80 + 20 * i, style=style, seed=i,
                         title=f"track {i}", artist=f"artist {i}")


@pytest.fixture
def music(tmp_path, db_url):
    music_db_url = sqlalchemy_url(db_url).render_as_string(hide_password=False)
    layout = MusicLayout.at(tmp_path / "data")
    layout.music_dir.mkdir(parents=True)
    resources = {"storage": StorageResource(data_root=str(layout.root)), "index_engine": IndexEngineResource(),
                 "music": MusicResource(db_url=music_db_url, features="essentia", batch_size=2)}
    defs = dg.Definitions.merge(music_definitions(resources), dg.Definitions(resources=resources))
    return layout, defs, dg.DagsterInstance.ephemeral()


def run(defs, instance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("build_music_library").execute_in_process(instance=instance, raise_on_error=False)


def materialised(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_the_job_analyses_indexes_checks_and_publishes_then_skips_when_nothing_changed(music):
    layout, defs, instance = music
    write_tracks(layout.music_dir)
    first = run(defs, instance)
    assert first.success
    assert materialised(first) == {"music_files", "track_analysis", "music_index", "published_music_library",
                                   "music_library_stats"}
    checks = {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks["id_map_alignment"] is True and checks["index_recall"] is True
    assert (layout.library("music") / "manifest.json").exists()
    messages = [entry.user_message for entry in instance.all_logs(first.run_id)]
    assert any("analysed 2/4 files (50%)" in m for m in messages) and any("analysed 4/4" in m for m in messages)
    stats = next(e for e in first.get_asset_materialization_events()
                 if e.asset_key.to_user_string() == "music_library_stats").materialization.metadata
    assert stats["index_coverage"].value == 1.0 and stats["indexed_files"].value == 4

    second = run(defs, instance)
    assert second.success and materialised(second) == {"music_files", "track_analysis"}
    assert any("is unchanged" in entry.user_message for entry in instance.all_logs(second.run_id))


def test_the_folder_sensor_requests_a_run_when_a_file_changes(music):
    layout, defs, instance = music
    sensor = defs.resolve_sensor_def("music_folder")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        assert isinstance(sensor(context), dg.SkipReason)          # an empty folder: nothing to do
    write_tracks(layout.music_dir, count=1)
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
        result = sensor(context)
    assert len(result.run_requests) == 1
    with dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=defs.resources) as context:
        assert isinstance(sensor(context), dg.SkipReason)          # seen: no second run
