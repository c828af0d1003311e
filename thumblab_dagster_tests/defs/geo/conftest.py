"""A temp data root with small 16-band mosaics in its mosaics folder, the geo definitions around it, an instance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from thumblab_dagster.defs.geo.definitions import geo_definitions
from thumblab_dagster.defs.resources import GeoResource, IndexEngineResource, StorageResource
from thumblab_dagster.lib.collections.geo.layout import GeoLayout
from thumblab_dagster_tests.collections.geo.mosaics import UTM_CRS, UTM_TRANSFORM, embedding_field, write_mosaic

BANDS = 16
HEIGHT, WIDTH = 200, 300


@dataclass
class Geo:
    layout: GeoLayout
    resources: dict
    defs: dg.Definitions
    instance: dg.DagsterInstance

    def mosaic(self, viewport_id: str, seed: int = 0, settle: bool = True) -> Path:
        """Write (or rewrite) a 200 x 300 x 16 uint8 UTM mosaic for ``viewport_id``; ``settle``: dated a minute back."""
        values = np.rint(embedding_field(HEIGHT, WIDTH, BANDS, seed=seed)).astype(np.uint8)
        path = write_mosaic(self.layout.mosaic_dir / f"{viewport_id}.tif", values, crs=UTM_CRS, transform=UTM_TRANSFORM)
        if settle:
            past = path.stat().st_mtime - 60
            os.utime(path, (past, past))
        return path

    def run(self, viewport_id: str, **kwargs) -> dg.ExecuteInProcessResult:
        if viewport_id not in self.instance.get_dynamic_partitions("viewports"):
            self.instance.add_dynamic_partitions("viewports", [viewport_id])
        return self.defs.resolve_job_def("build_viewport").execute_in_process(
            partition_key=viewport_id, instance=self.instance, raise_on_error=False, **kwargs)


def make_geo(tmp: Path) -> Geo:
    layout = GeoLayout.at(tmp / "data")
    layout.mosaic_dir.mkdir(parents=True)
    resources = {"storage": StorageResource(data_root=str(layout.root)), "index_engine": IndexEngineResource(),
                 "geo": GeoResource(expected_bands=BANDS)}
    defs = dg.Definitions.merge(geo_definitions(resources), dg.Definitions(resources=resources))
    return Geo(layout, resources, defs, dg.DagsterInstance.ephemeral())


@pytest.fixture
def geo(tmp_path) -> Geo:
    return make_geo(tmp_path)


@pytest.fixture(scope="module")
def geo_module(tmp_path_factory) -> Geo:
    return make_geo(tmp_path_factory.mktemp("geo_defs"))


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
            for e in [e.event_specific_data.materialization]}


def observations(result) -> dict[str, dict]:
    return {e.event_specific_data.asset_observation.asset_key.to_user_string():
            {k: v.value for k, v in e.event_specific_data.asset_observation.metadata.items()}
            for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}


def check_results(result) -> dict[str, object]:
    return {f"{e.event_specific_data.asset_key.to_user_string()}:{e.event_specific_data.check_name}":
            e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def log_messages(instance: dg.DagsterInstance, result) -> list[str]:
    """Every line of the run's event log (what the UI shows), user log lines included."""
    return [entry.user_message for entry in instance.all_logs(result.run_id)]
