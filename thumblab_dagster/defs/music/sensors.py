"""The music job and the sensor that watches the music folder (THUMBLAB_MUSIC_DIR)."""

import dagster as dg

from thumblab_dagster.defs.music.where import GROUP
from thumblab_dagster.defs.resources import MusicResource, StorageResource
from thumblab_dagster.lib.collections.music.scan import audio_files, folder_signature

BUILD_MUSIC_LIBRARY = "build_music_library"

build_music_library = dg.define_asset_job(
    BUILD_MUSIC_LIBRARY, selection=dg.AssetSelection.groups(GROUP),
    description="Scan the music folder, analyse new or changed tracks, index, check and publish the library; "
                "an unchanged analysed set is not rebuilt.")


@dg.sensor(job=build_music_library, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def music_folder(context: dg.SensorEvaluationContext, storage: StorageResource,
                 music: MusicResource) -> dg.SensorResult | dg.SkipReason:
    """Requests a run when a file in the music folder is added, removed, touched or rewritten (paths, sizes
    and mtimes: no audio is read here; the run hashes contents and analyses only what changed)."""
    folder = music.layout(storage).music_dir
    if not folder.is_dir():
        return dg.SkipReason(f"music folder {folder} does not exist yet: create it or set THUMBLAB_MUSIC_DIR")
    signature = folder_signature(folder)
    if signature == context.cursor:
        return dg.SkipReason("no file in the music folder changed")
    if context.cursor is None and not audio_files(folder):
        return dg.SkipReason(f"no audio files (wav, flac, mp3, ogg) in {folder} yet")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"music:{signature}", tags={"music_folder": signature[:16]})],
                           cursor=signature)
