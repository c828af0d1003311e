"""The catalogue from products to a published, checked sharded index: a second run embeds and appends only
the new products; a deleted product leaves at the full build; the checker's lines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.catalogue import pipeline
from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue

SETTINGS = pipeline.CatalogueSettings(shard_size=16, batch_size=16, check_sample=20)


def run(layout, name, products, clip, fetch, force_full=False, lines=None):
    csv = layout.root / f"{name}.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    products.to_csv(csv, index=False)
    pipeline.remember_source(layout, name, str(csv))
    pipeline.snapshot_products(layout, name, SETTINGS)
    embedded = pipeline.embed_new(layout, name, clip, SETTINGS, fetch=fetch)
    manifest, how = pipeline.build_index(layout, name, SETTINGS, force_full=force_full)
    report = pipeline.check(layout, name, clip, sample=20, fetch=fetch, out=(lines.append if lines is not None
                                                                             else lambda line: None))
    assert report.passed, report.problems
    assert pipeline.publish_catalogue(layout, name).published
    return embedded, manifest, how, report


def test_a_second_run_embeds_and_appends_only_the_new_products(tmp_path, catalogue_clip, fetch):
    layout = CatalogueLayout.at(tmp_path / "data")
    first, manifest, how, _ = run(layout, "color", sample_catalogue(40), catalogue_clip, fetch)
    assert how == "full" and first.as_dict()["embedded"] == 40 and manifest.ntotal == 40
    assert [s.count for s in manifest.shards] == [16, 16, 8]
    published = layout.catalogue("color")
    assert (published / "clip_color_shard_00000.index").exists() and (published / "id_map_color.json").exists()
    before = pd.read_parquet(layout.embeddings("color"))

    lines = []
    second, manifest, how, report = run(layout, "color", sample_catalogue(45), catalogue_clip, fetch, lines=lines)
    assert second.plan.counts() == {"new": 5, "changed": 0, "kept": 40, "deleted": 0}
    assert second.as_dict()["embedded"] == 5 and how == "append"
    assert [s.count for s in manifest.shards] == [16, 16, 13]          # the open last shard filled, no new one
    after = pd.read_parquet(layout.embeddings("color")).set_index("id")
    kept = before.set_index("id")
    assert np.array_equal(np.stack(after.loc[kept.index, "embedding"]), np.stack(kept["embedding"]))
    assert report.metrics["positions_verified"] == report.metrics["positions_total"] == 45
    assert any(line.startswith("[1/20] ok id=") and "rank=1" in line for line in lines)


def test_a_run_with_no_new_vectors_keeps_the_index(tmp_path, catalogue_clip, fetch):
    """The same products again, then one more whose image is broken: nothing to append, the run still passes."""
    layout = CatalogueLayout.at(tmp_path / "data")
    products = sample_catalogue(20)
    run(layout, "shop", products, catalogue_clip, fetch)
    again, manifest, how, _ = run(layout, "shop", products, catalogue_clip, fetch)
    assert again.plan.counts() == {"new": 0, "changed": 0, "kept": 20, "deleted": 0}
    assert how == "unchanged" and manifest.ntotal == 20 and [s.count for s in manifest.shards] == [16, 4]

    broken = pd.DataFrame([{"id": "x-broken", "image_url": str(tmp_path / "missing.jpg"), "brand": "aw"}])
    more, manifest, how, _ = run(layout, "shop", pd.concat([products, broken], ignore_index=True),
                                 catalogue_clip, fetch)
    assert more.as_dict()["broken"] == 1 and more.as_dict()["embedded"] == 0
    assert how == "unchanged" and manifest.ntotal == 20


def test_a_deleted_product_leaves_at_the_full_build(tmp_path, catalogue_clip, fetch):
    layout = CatalogueLayout.at(tmp_path / "data")
    products = sample_catalogue(40)
    run(layout, "shop", products, catalogue_clip, fetch)
    gone = products["id"].iloc[3]
    embedded, manifest, how, _ = run(layout, "shop", products.drop(index=3), catalogue_clip, fetch)
    assert embedded.plan.counts()["deleted"] == 1 and embedded.as_dict()["embedded"] == 0
    assert how == "full" and manifest.ntotal == 39
    ids = pd.read_json(layout.catalogue("shop") / "id_map_shop.json", typ="series").tolist()
    assert gone not in ids and len(ids) == 39


def test_upload_puts_every_file_and_the_id_map_last(tmp_path, catalogue_clip, fetch):
    from thumblab_dagster.lib.stores.upload import FsspecDestination

    layout = CatalogueLayout.at(tmp_path / "data")
    run(layout, "color", sample_catalogue(20), catalogue_clip, fetch)
    put = []

    class Recording(FsspecDestination):
        def put(self, local, path):
            put.append(path)
            super().put(local, path)

    result = pipeline.upload_catalogue(layout, "color", Recording(f"file://{tmp_path}/bucket/faiss"))
    assert put[-1] == "color/id_map_color.json" and put[-2] == "color/manifest.json"
    assert (tmp_path / "bucket" / "faiss" / "color" / "clip_color_shard_00000.index").exists()
    assert result["files"][-1] == "id_map_color.json"
