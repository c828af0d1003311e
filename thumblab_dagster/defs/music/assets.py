"""The music collection's own assets: music_files (the folder, scanned) and track_analysis (the audio,
analysed). The index tail (music_index -> checks -> published_music_library / music_library_stats) is in index.py."""

import dagster as dg
import pandas as pd

from thumblab_dagster.defs.index_tail import lib_logs_to
from thumblab_dagster.defs.metadata import ROW_COUNT, rounded
from thumblab_dagster.defs.music.where import GROUP, OWNERS, RESOURCES, TAGS, music_store
from thumblab_dagster.lib.collections.music import pipeline

COMMON = dict(group_name=GROUP, owners=OWNERS, tags=TAGS, required_resource_keys=set(RESOURCES))
SHOWN_FAILURES = 20


def _table(rows: list[list], header: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.md(pd.DataFrame(rows, columns=header).to_markdown(index=False))


@dg.asset(kinds={"postgres", "audio"}, code_version="1", **COMMON)
def music_files(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every audio file of the music folder (THUMBLAB_MUSIC_DIR) in the music database: new and changed files
    (by content hash) recorded with their tags, files gone from the folder marked deleted."""
    with music_store(context) as (layout, store, _):
        try:
            changes = pipeline.scan_folder_into(store, layout)
        except FileNotFoundError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        rows = store.files()
        counts = store.counts()
    return dg.MaterializeResult(metadata={
        ROW_COUNT: dg.MetadataValue.int(counts["total_files"]),
        **changes.summary(),
        **counts,
        "music_dir": dg.MetadataValue.path(str(layout.music_dir)),
        "preview": _table([[r.path, r.title or "", r.artist or "", r.status] for r in rows[:20]],
                          ["path", "title", "artist", "status"]),
    })


@dg.asset(deps=[music_files], kinds={"postgres", "essentia"}, code_version="1", **COMMON)
def track_analysis(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Tempo, key, scale and chroma (Essentia) and the 50 MusiCNN MSD tags of every new or changed file, in
    batches with progress in the run's log. A file that fails to decode is recorded with its reason and skipped."""
    with music_store(context) as (layout, store, settings), lib_logs_to(context.log):
        run = pipeline.analyse_pending(store, layout, settings)
        counts = store.counts()
    return dg.MaterializeResult(metadata={
        ROW_COUNT: dg.MetadataValue.int(counts["analysed_files"]),
        **run.as_dict(),
        "seconds": rounded(run.seconds, 2),
        "files_per_second": rounded(run.analysed / run.seconds if run.seconds and run.analysed else 0.0, 3),
        "analysed_files": counts["analysed_files"],
        "failed_files": counts["failed_files"],
        "features": "Essentia + MusiCNN (67-d)" if settings.include_tensorflow else "Essentia (17-d)",
        "failures": _table([[p, r] for p, r in run.failed[:SHOWN_FAILURES]], ["file", "reason"]) if run.failed
        else "none",
    })
