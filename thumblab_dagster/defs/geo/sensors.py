"""The viewport job and the sensor that watches the mosaics folder (THUMBLAB_MOSAIC_DIR)."""

import json

import dagster as dg

from thumblab_dagster.defs.geo.partitions import GROUP, VIEWPORTS, viewport_partitions
from thumblab_dagster.defs.resources import GeoResource, StorageResource
from thumblab_dagster.lib.collections.geo.discovery import discover, parse_cursor

BUILD_VIEWPORT = "build_viewport"

build_viewport = dg.define_asset_job(
    BUILD_VIEWPORT, selection=dg.AssetSelection.groups(GROUP), partitions_def=viewport_partitions,
    description="Read, index, check and publish one viewport's mosaic, and draw its preview; an unchanged "
                "mosaic is not rebuilt.")


@dg.sensor(job=build_viewport, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def viewport_mosaics(context: dg.SensorEvaluationContext, storage: StorageResource,
                     geo: GeoResource) -> dg.SensorResult:
    """Adds a viewport partition for every GeoTIFF in the mosaics folder and requests a build when a
    mosaic is new or its content changed (size and mtime first; the sha256 only for touched files)."""
    folder = geo.layout(storage).mosaic_dir
    found = discover(folder, parse_cursor(context.cursor))
    for problem in found.problems:
        context.log.warning(problem)
    if found.settling:
        context.log.info(f"still being written, looked at next time: {', '.join(found.settling)}")
    known = set(context.instance.get_dynamic_partitions(VIEWPORTS))
    new = sorted(set(found.mosaics) - known)
    runs = [dg.RunRequest(partition_key=viewport_id, run_key=f"{viewport_id}:{digest}",
                          tags={"viewport_id": viewport_id, "mosaic_fingerprint": digest})
            for viewport_id, digest in sorted(found.changed.items())]
    return dg.SensorResult(run_requests=runs,
                           dynamic_partitions_requests=[viewport_partitions.build_add_request(new)] if new else [],
                           cursor=json.dumps(found.cursor, sort_keys=True))
