"""The catalogue job in Dagster: products from the loopback Supabase gateway, embedded, indexed in shards,
checked by re-encoding, published in the seed's names and uploaded to its Storage with the id map last; a
second run embeds and appends only the new products."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from thumblab_dagster.defs.catalogue.definitions import catalogue_definitions
from thumblab_dagster.defs.resources import (
    CatalogueResource,
    ClipEmbedderResource,
    IndexEngineResource,
    StorageResource,
    SupabaseResource,
)
from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue
from thumblab_dagster_tests.fakes.supabase import FakeSupabaseServer

KEY = "service-role-key-for-tests"


def rows(n: int) -> list[dict]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in sample_catalogue(n).to_dict("records")]


@pytest.fixture
def gateway():
    with FakeSupabaseServer(KEY, tables={"products": rows(30)}) as state:
        yield state


def definitions(tmp_path, gateway):
    layout = CatalogueLayout.at(tmp_path / "data")
    supabase = SupabaseResource(url=gateway.base_url, key=KEY)
    resources = {"storage": StorageResource(data_root=str(layout.root)), "index_engine": IndexEngineResource(),
                 "embedder": ClipEmbedderResource(model="ViT-S-32", pretrained="none"),
                 "catalogue": CatalogueResource(source="supabase", shard_size=12, batch_size=10, bucket="faiss-indexes",
                                                prefix="catalogues", supabase=supabase)}
    defs = dg.Definitions.merge(catalogue_definitions(resources), dg.Definitions(resources=resources))
    return layout, defs


def run(defs, instance, name="color") -> dg.ExecuteInProcessResult:
    if name not in instance.get_dynamic_partitions("catalogues"):
        instance.add_dynamic_partitions("catalogues", [name])
    return defs.resolve_job_def("build_catalogue").execute_in_process(partition_key=name, instance=instance,
                                                                       raise_on_error=False)


def metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_supabase_products_are_indexed_checked_published_and_uploaded_then_only_new_ones_embedded(tmp_path, gateway):
    layout, defs = definitions(tmp_path, gateway)
    instance = dg.DagsterInstance.ephemeral()
    first = run(defs, instance)
    assert first.success
    assert {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()} == {
        "catalogue_products", "product_embeddings", "catalogue_index", "published_catalogue", "catalogue_stats",
        "uploaded_catalogue"}
    checks = {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks["id_map_alignment"] is True
    assert metadata(first, "product_embeddings")["embedded"] == 30
    assert metadata(first, "catalogue_index")["shards"] == [12, 12, 6]
    logs = [entry.user_message for entry in instance.all_logs(first.run_id)]
    assert "Batch 3: Total=30, Embedded=30" in logs
    assert any(line.endswith("new vectors") for line in logs)
    uploaded = [path for (bucket, path) in gateway.objects if bucket == "faiss-indexes"]
    assert "catalogues/color/clip_color_shard_00002.index" in uploaded
    puts = [r["path"] for r in gateway.requests if r.get("method") in ("POST", "PUT") and "/storage/" in r["path"]]
    assert puts and puts[-1].endswith("catalogues/color/id_map_color.json")   # the id map last

    gateway.tables["products"] = rows(35)
    second = run(defs, instance)
    assert second.success
    embedded = metadata(second, "product_embeddings")
    assert (embedded["new"], embedded["kept"], embedded["embedded"]) == (5, 30, 5)
    index = metadata(second, "catalogue_index")
    assert index["how"] == "appended (no retraining)" and index["shards"] == [12, 12, 11]


def test_a_bad_source_fails_the_snapshot_in_one_line(tmp_path, gateway):
    layout, defs = definitions(tmp_path, gateway)
    from thumblab_dagster.lib.collections.catalogue.pipeline import remember_source

    remember_source(layout, "broken", str(tmp_path / "missing.csv"))
    result = run(defs, dg.DagsterInstance.ephemeral(), "broken")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "missing.csv" in failure.step_failure_data.error.message
