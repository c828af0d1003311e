"""The catalogue's sharded index: the seed's file names when published, appends that fill the open shard."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from thumblab_dagster.lib.collections.catalogue.checker import check_alignment
from thumblab_dagster.lib.collections.catalogue.shards import (
    SEED_ID_MAP,
    append_products,
    build_catalogue_index,
    publish_layout,
    published_names,
    read_seed_id_map,
)
from thumblab_dagster.lib.engine.build import IndexSpec, build_index_dir
from thumblab_dagster.lib.engine.publish import load_published, publish
from thumblab_dagster.lib.engine.shards import load_any, load_sharded
from thumblab_dagster.lib.engine.validate import validate_index_dir
from thumblab_dagster.lib.engine.versions import VersionMismatchError

MODEL = {"identity": "clip-test-random"}


def unit(n, d=16, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def product_ids(lo, hi):
    return [f"sku-{i}" for i in range(lo, hi)]


def centroids(shard):
    ivf = faiss.extract_index_ivf(shard)
    return faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)


def encoder(vectors, ids):
    """The 'model' that gave the stored vectors: image URL img://<id> -> that product's vector."""
    row = {i: r for r, i in enumerate(ids)}
    return lambda urls: vectors[[row[u.removeprefix("img://")] for u in urls]]


def test_published_names_are_the_seeds():
    assert published_names("color", "clip_color", 2) == {
        "shard_00000.index": "clip_color_shard_00000.index", "shard_00001.index": "clip_color_shard_00001.index",
        SEED_ID_MAP: "id_map_color.json"}


def test_build_writes_an_engine_directory_with_the_seeds_id_map_and_publishes_under_its_names(tmp_path):
    vectors, ids = unit(120), product_ids(0, 120)
    manifest = build_catalogue_index(tmp_path / "idx", vectors, ids, shard_size=50,
                                     spec=IndexSpec(factory="Flat", embedding=MODEL))
    assert [s["count"] for s in manifest.shards] == [50, 50, 20]
    assert read_seed_id_map(tmp_path / "idx" / SEED_ID_MAP).tolist() == ids
    assert SEED_ID_MAP in manifest.files and validate_index_dir(tmp_path / "idx").passed
    assert not [p for p in tmp_path.iterdir() if p.name != "idx"]  # the staged id map was moved in

    layout = publish_layout("color", "clip_color", manifest)
    assert publish(tmp_path / "idx", tmp_path / "pub", "color", "2026-11-30", layout=layout).published
    names = sorted(os.listdir(tmp_path / "pub" / "color"))
    assert names == ["clip_color_shard_00000.index", "clip_color_shard_00001.index", "clip_color_shard_00002.index",
                     "id_map.json", "id_map_color.json", "ids.npy", "manifest.json"]
    assert json.loads((tmp_path / "pub" / "color" / "id_map_color.json").read_text()) == ids  # what seed readers load
    loaded = load_published(tmp_path / "pub", "color", layout=layout)  # the engine loads the renamed copy as it is
    _, found = loaded.search(vectors[[7, 101]], 1)
    assert [loaded.ids[p] for p in found[:, 0]] == ["sku-7", "sku-101"]
    report = check_alignment(tmp_path / "pub" / "color", encode=encoder(vectors, ids),
                             urls_by_id={i: f"img://{i}" for i in ids}, out=lambda line: None)
    assert report.passed and report.metrics["positions_verified"] == 120
    assert any(line.startswith("shard#2 clip_color_shard_00002.index: positions 100..119") for line in report.lines)


def test_build_refuses_repeated_or_no_ids(tmp_path):
    with pytest.raises(ValueError, match="1 repeated product ids, e.g. \\['sku-1'\\]"):
        build_catalogue_index(tmp_path / "idx", unit(3), ["sku-0", "sku-1", "sku-1"], shard_size=2)
    with pytest.raises(ValueError, match="no products to index"):
        build_catalogue_index(tmp_path / "idx", unit(0), [], shard_size=2)


def test_append_fills_the_open_shard_then_opens_new_ones_without_retraining(tmp_path):
    vectors, ids = unit(480, seed=1), product_ids(0, 480)
    build_catalogue_index(tmp_path / "v1", vectors[:400], ids[:400], shard_size=150,
                          spec=IndexSpec(factory="IVF4,Flat", embedding=MODEL))
    v1 = load_sharded(tmp_path / "v1")
    assert [s["count"] for s in v1.offsets] == [150, 150, 100]

    m2 = append_products(v1, tmp_path / "v2", vectors[400:470], ids[400:470], shard_size=150, embedding=MODEL)
    assert [(s["file"], s["offset"], s["count"]) for s in m2.shards] == [
        ("shard_00000.index", 0, 150), ("shard_00001.index", 150, 150), ("shard_00002.index", 300, 150),
        ("shard_00003.index", 450, 20)]
    assert m2.added_rows == 70 and m2.parent_version == "v1"
    v2 = load_sharded(tmp_path / "v2")
    for before, after in zip(v1.shards, v2.shards):
        np.testing.assert_array_equal(centroids(before), centroids(after))   # appended, never retrained
    np.testing.assert_array_equal(centroids(v1.shards[0]), centroids(v2.shards[3]))
    # Only the open shard was rewritten: the full ones are the parent's files, linked.
    for file in ("shard_00000.index", "shard_00001.index"):
        assert m2.files[file].sha256 == v1.manifest.files[file].sha256
        assert os.path.samefile(tmp_path / "v1" / file, tmp_path / "v2" / file)
    assert m2.files["shard_00002.index"].sha256 != v1.manifest.files["shard_00002.index"].sha256
    assert load_sharded(tmp_path / "v1").ntotal == 400  # the parent is untouched

    m3 = append_products(v2, tmp_path / "v3", vectors[470:], ids[470:], shard_size=150, embedding=MODEL)
    assert [s["count"] for s in m3.shards] == [150, 150, 150, 30]
    v3 = load_sharded(tmp_path / "v3")
    assert read_seed_id_map(tmp_path / "v3" / SEED_ID_MAP).tolist() == ids == v3.ids.tolist()
    _, found = v3.search(vectors[[0, 420, 460, 479]], 1)
    assert [v3.ids[p] for p in found[:, 0]] == ["sku-0", "sku-420", "sku-460", "sku-479"]
    assert validate_index_dir(tmp_path / "v3").passed
    report = check_alignment(tmp_path / "v3", encode=encoder(vectors, ids), urls_by_id={i: f"img://{i}" for i in ids},
                             sample=480, out=lambda line: None)
    assert report.passed, report.problems
    assert report.metrics["positions_verified"] == report.metrics["positions_total"] == 480


def test_append_into_the_live_directory_itself(tmp_path):
    vectors, ids = unit(30, seed=5), product_ids(0, 30)
    build_catalogue_index(tmp_path / "idx", vectors[:25], ids[:25], shard_size=10,
                          spec=IndexSpec(factory="Flat", embedding=MODEL))
    manifest = append_products(load_sharded(tmp_path / "idx"), tmp_path / "idx", vectors[25:], ids[25:],
                               shard_size=10, embedding=MODEL)
    assert [s["count"] for s in manifest.shards] == [10, 10, 10]
    assert load_sharded(tmp_path / "idx").ids.tolist() == ids == read_seed_id_map(tmp_path / "idx" / SEED_ID_MAP).tolist()
    assert validate_index_dir(tmp_path / "idx").passed


def test_append_refuses_another_model_known_ids_and_an_unsharded_index(tmp_path):
    vectors, ids = unit(60, seed=2), product_ids(0, 60)
    build_catalogue_index(tmp_path / "v1", vectors[:50], ids[:50], shard_size=20,
                          spec=IndexSpec(factory="Flat", embedding=MODEL))
    live = load_sharded(tmp_path / "v1")
    with pytest.raises(VersionMismatchError, match="clip-other"):
        append_products(live, tmp_path / "v2", vectors[50:], ids[50:], shard_size=20,
                        embedding={"identity": "clip-other"})
    with pytest.raises(VersionMismatchError, match="already holds"):
        append_products(live, tmp_path / "v2", vectors[50:], ids[40:50], shard_size=20, embedding=MODEL)
    assert not (tmp_path / "v2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no staged id map left behind
    build_index_dir(tmp_path / "single", vectors, ids, factory="Flat", embedding=MODEL)
    with pytest.raises(ValueError, match="is not a sharded index: build it with build_catalogue_index"):
        append_products(load_any(tmp_path / "single"), tmp_path / "v2", vectors[:1], ["new"], shard_size=20,
                        embedding=MODEL)
