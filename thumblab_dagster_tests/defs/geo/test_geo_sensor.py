"""The viewport_mosaics sensor on a real (ephemeral) instance: a partition and a run for a new mosaic,
nothing for an unchanged or merely touched one, a run again when the content changes."""

from __future__ import annotations

import json
import os

import dagster as dg

from thumblab_dagster.defs.geo.sensors import BUILD_VIEWPORT, viewport_mosaics


def tick(geo, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=geo.instance, cursor=cursor,
                                      resources={"storage": geo.resources["storage"], "geo": geo.resources["geo"]})
    result = viewport_mosaics(context)
    for request in result.dynamic_partitions_requests:      # what the daemon does with the request
        geo.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def added(result) -> list[str]:
    return [key for request in result.dynamic_partitions_requests for key in request.partition_keys]


def test_a_new_mosaic_gets_a_partition_and_a_run_an_unchanged_one_nothing(geo):
    assert viewport_mosaics.job_name == BUILD_VIEWPORT
    path = geo.mosaic("viewport_new", seed=5)
    first = tick(geo)
    assert added(first) == ["viewport_new"]
    [run] = first.run_requests
    assert run.partition_key == "viewport_new" and run.run_key.startswith("viewport_new:")
    assert geo.instance.get_dynamic_partitions("viewports") == ["viewport_new"]
    assert json.loads(first.cursor)["viewport_new"]["fingerprint"] == run.tags["mosaic_fingerprint"]

    second = tick(geo, first.cursor)                       # nothing changed
    assert added(second) == [] and second.run_requests == []

    stamp = path.stat().st_mtime - 30                      # touched: same bytes, another mtime
    os.utime(path, (stamp, stamp))
    touched = tick(geo, second.cursor)
    assert touched.run_requests == [] and json.loads(touched.cursor)["viewport_new"]["mtime_ns"] == path.stat().st_mtime_ns

    geo.mosaic("viewport_new", seed=6)                     # new content
    changed = tick(geo, touched.cursor)
    assert added(changed) == [] and [r.partition_key for r in changed.run_requests] == ["viewport_new"]
    assert changed.run_requests[0].run_key != run.run_key


def test_files_being_written_or_badly_named_are_left_out(geo):
    geo.mosaic("viewport_fresh", seed=7, settle=False)     # modified a moment ago: maybe still being copied in
    bad = geo.layout.mosaic_dir / "bad name!.tif"
    geo.mosaic("viewport_ok", seed=8).rename(bad)
    (geo.layout.mosaic_dir / ".viewport_tmp.tif").write_bytes(b"half a copy")   # hidden: a copy in progress
    result = tick(geo)
    assert added(result) == [] and result.run_requests == []
    fresh = geo.layout.mosaic_dir / "viewport_fresh.tif"
    stamp = fresh.stat().st_mtime - 60
    os.utime(fresh, (stamp, stamp))
    later = tick(geo, result.cursor)
    assert added(later) == ["viewport_fresh"] and [r.partition_key for r in later.run_requests] == ["viewport_fresh"]
