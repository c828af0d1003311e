"""The alignment checker catches what drifted ids look like: swapped ids, shifted shards, a short id map,
vectors from another model; a clean index passes with every position verified, whatever its metric."""

from __future__ import annotations

import json
import re

import faiss
import numpy as np
import pytest

from thumblab_dagster.lib.collections.catalogue.checker import check_alignment
from thumblab_dagster.lib.collections.catalogue.shards import SEED_ID_MAP, build_catalogue_index, publish_layout
from thumblab_dagster.lib.engine.build import IndexSpec, build_index_dir
from thumblab_dagster.lib.engine.index_dir import read_manifest, sha256_file
from thumblab_dagster.lib.engine.publish import publish
from thumblab_dagster.lib.engine.shards import load_sharded

N, D, SHARD = 120, 16, 50
LINE = re.compile(r"^\[(\d+)/(\d+)\] (ok|FAIL) id=(\S+) \| pos\(id_map\)=(\d+) -> shard#(\d+|\?) \| "
                  r"top1_pos=(\d+) -> shard#(\d+|\?) \| rank=(\d+|>\d+) \| cos=(\d\.\d{4}|-\d\.\d{4}|n/a)$")


def unit(vectors):
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def products():
    vectors = unit(np.random.default_rng(0).standard_normal((N, D)))
    vectors[6] = vectors[5]  # two products with the same image
    ids = [f"sku-{i}" for i in range(N)]
    return vectors, ids, {i: f"img://{i}" for i in ids}


def build(directory, products, metric="inner_product"):
    vectors, ids, _ = products
    build_catalogue_index(directory, vectors, ids, shard_size=SHARD,
                          spec=IndexSpec(factory="Flat", metric=metric, embedding={"identity": "clip-test"}))
    return directory


def encoder(vectors, ids, change=None):
    """Re-encoding each product's image: its stored vector, or ``change``d (perturbed, another model)."""
    row = {i: r for r, i in enumerate(ids)}
    out = vectors if change is None else change(vectors)
    return lambda urls: out[[row[u.removeprefix("img://")] for u in urls]]


def check(directory, products, change=None, **kwargs):
    vectors, ids, urls = products
    return check_alignment(directory, encode=encoder(vectors, ids, change), urls_by_id=urls, out=lambda line: None,
                           **kwargs)


def samples(report):
    return {m.group(4): m for m in map(LINE.match, report.lines) if m}


def refresh_checksum(directory, name):
    """Keep the manifest's checksum of ``name`` consistent: only the checker's own logic may catch the change."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def rewrite_seed_id_map(directory, change, file=SEED_ID_MAP):
    ids = json.loads((directory / file).read_text())
    (directory / file).write_text(json.dumps(change(ids)))
    refresh_checksum(directory, file)


def swap(ids, a=10, b=11):
    ids = list(ids)
    ids[a], ids[b] = ids[b], ids[a]
    return ids


def test_a_clean_index_passes_with_every_position_verified(tmp_path, products):
    lines = []
    vectors, ids, urls = products
    report = check_alignment(build(tmp_path / "idx", products), encode=encoder(vectors, ids), urls_by_id=urls,
                             out=lines.append, name="color")
    assert report.passed and report.problems == [] and lines == report.lines
    assert report.metrics | {"min_cos": None} == {
        "positions_verified": N, "positions_total": N, "positions_verified_share": 1.0, "sampled_ok": N,
        "sampled_total": N, "min_cos": None, "shards": 3, "ntotal": N, "id_map_entries": N}
    assert report.metrics["min_cos"] > 0.9999
    heads = [line for line in lines if line.startswith("==")]
    assert heads == ["== sanity ==", f"== random search ({N} samples, re-encoded images) ==", "== shard verification =="]
    found = samples(report)
    assert len(found) == N and all(m.group(3) == "ok" and m.group(9) == "1" for m in found.values())
    line = found["sku-73"]
    assert line.group(5, 6, 7, 8) == ("73", "1", "73", "1") and line.group(2) == str(N)
    # Identical images: either may come first, both count as found.
    assert {found["sku-5"].group(7), found["sku-6"].group(7)} <= {"5", "6"}
    assert found["sku-5"].group(7) == found["sku-6"].group(7)
    assert "shard#2 shard_00002.index: positions 100..119 (20 vectors) ok" in lines
    assert lines[-1] == f"PASSED: {N}/{N} positions verified (100.0%), {N}/{N} sampled found at rank 1, min cos 1.0000"


def test_a_swapped_pair_in_the_id_map_is_caught(tmp_path, products):
    directory = build(tmp_path / "idx", products)
    (directory / SEED_ID_MAP).write_text(json.dumps(swap(products[1])))
    assert any("checksum: ids.json sha256 differs" in p for p in check(directory, products).problems)
    refresh_checksum(directory, SEED_ID_MAP)
    report = check(directory, products)
    assert not report.passed and report.metrics["positions_verified"] == N - 2
    assert "position 10: ids.json has 'sku-11', ids.npy has 'sku-10'" in report.problems
    failed = {i: m for i, m in samples(report).items() if m.group(3) == "FAIL"}
    assert sorted(failed) == ["sku-10", "sku-11"]
    assert failed["sku-11"].group(5, 7) == ("10", "11") and float(failed["sku-11"].group(10)) < 0.999
    assert report.lines[-1].startswith(f"FAILED: {N - 2}/{N} positions verified")


def test_ids_swapped_everywhere_are_caught_by_re_encoding(tmp_path, products):
    """The build itself mislabelled two products: every id file agrees, only the images tell."""
    directory = build(tmp_path / "idx", products)
    rewrite_seed_id_map(directory, swap)
    np.save(directory / "ids.npy", np.asarray(swap(products[1])), allow_pickle=False)
    refresh_checksum(directory, "ids.npy")
    report = check(directory, products)
    assert f"sanity: {N}/{N} positions map to their ids" in report.lines
    assert not report.passed
    failed = {i: m for i, m in samples(report).items() if m.group(3) == "FAIL"}
    assert sorted(failed) == ["sku-10", "sku-11"]
    assert failed["sku-10"].group(5, 7) == ("11", "10")
    assert any(p.startswith("[11/120] FAIL id=sku-11 | pos(id_map)=10 -> shard#0 | top1_pos=11") for p in report.problems)


def test_a_shard_whose_rows_restart_at_zero_is_caught(tmp_path, products):
    """faiss's merge_from without ids: shard 1's rows carry positions 0.. instead of 50.."""
    directory = build(tmp_path / "idx", products)
    vectors = products[0]
    bad = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    bad.add_with_ids(vectors[SHARD:2 * SHARD], np.arange(0, SHARD, dtype=np.int64))
    faiss.write_index(bad, str(directory / "shard_00001.index"))
    refresh_checksum(directory, "shard_00001.index")
    report = check(directory, products)
    assert not report.passed and report.metrics["positions_verified"] == N - SHARD
    assert ("shard#1 shard_00001.index: positions 50..99 (50 vectors) FAIL: 50 rows carry another position, "
            "e.g. local row 0 carries 0, expected 50") in report.problems
    line = samples(report)["sku-60"]
    assert line.group(3, 5, 6, 7, 8, 10) == ("FAIL", "60", "1", "10", "0", "n/a")


def test_a_shifted_offset_in_the_shard_list_is_caught(tmp_path, products):
    directory = build(tmp_path / "idx", products)
    id_map = json.loads((directory / "id_map.json").read_text())
    id_map["shards"][1]["offset"] += 5
    (directory / "id_map.json").write_text(json.dumps(id_map))
    refresh_checksum(directory, "id_map.json")
    report = check(directory, products)
    assert not report.passed
    assert any(p.startswith("shard#1 shard_00001.index: positions 55..104 (50 vectors) FAIL: offset 55, expected 50")
               for p in report.problems)
    assert samples(report)["sku-52"].group(6) == "?"  # position 52 is in no shard's planned range now


def test_a_truncated_id_map_is_caught_in_the_published_copy(tmp_path, products):
    directory = build(tmp_path / "idx", products)
    layout = publish_layout("color", "clip_color", read_manifest(directory))
    publish(directory, tmp_path / "pub", "color", "2026-11-30", layout=layout)
    published = tmp_path / "pub" / "color"
    assert check(published, products).passed
    rewrite_seed_id_map(published, lambda ids: ids[:100], file="id_map_color.json")
    report = check(published, products)
    assert not report.passed
    assert "Mismatch for color: index has 120, id_map has 100" in report.problems
    assert "Mismatch for clip_color_shard_00002.index: index has 20, id_map has 0" in report.problems
    assert "Mismatch for color: ids.npy has 120, id_map has 100" in report.problems
    assert report.metrics["positions_verified"] == 100 and report.metrics["positions_total"] == N


def test_vectors_from_another_model_or_drifted_fail_on_cosine(tmp_path, products):
    directory = build(tmp_path / "idx", products)
    rotation, _ = np.linalg.qr(np.random.default_rng(9).standard_normal((D, D)))
    other = check(directory, products, change=lambda v: unit(v @ rotation.astype(np.float32)))
    assert not other.passed and other.metrics["sampled_ok"] < N // 10 and other.metrics["min_cos"] < 0.999
    noise = np.random.default_rng(3).standard_normal((N, D)).astype(np.float32)
    drifted = check(directory, products, change=lambda v: unit(v + 0.1 * noise / np.sqrt(D)))
    assert not drifted.passed
    # Still the nearest, but not the same image encoded by the same model: below 0.999 fails.
    assert any(m.group(3) == "FAIL" and m.group(9) == "1" and float(m.group(10)) < 0.999
               for m in samples(drifted).values())
    close = check(directory, products, change=lambda v: unit(v + 0.005 * noise / np.sqrt(D)))
    assert close.passed and 0.999 <= close.metrics["min_cos"] < 1.0


def test_l2_and_inner_product_indices_report_the_same_cosines(tmp_path, products):
    noise = np.random.default_rng(4).standard_normal((N, D)).astype(np.float32)

    def drift(v):
        return unit(v + 0.01 * noise / np.sqrt(D))

    reports = [check(build(tmp_path / metric, products, metric), products, change=drift, sample=60)
               for metric in ("inner_product", "l2")]
    cosines = [[m.group(10) for m in samples(r).values()] for r in reports]
    assert reports[0].passed and reports[1].passed and cosines[0] == cosines[1] and len(cosines[0]) == 60
    assert reports[0].metrics["min_cos"] == pytest.approx(reports[1].metrics["min_cos"], abs=1e-6)


def test_without_an_encoder_the_stored_vectors_are_searched(tmp_path, products):
    report = check_alignment(build(tmp_path / "idx", products), out=lambda line: None, sample=30)
    assert report.passed and report.metrics["sampled_total"] == 30
    assert "== random search (30 samples, stored vectors: no encoder given) ==" in report.lines


def test_an_index_already_loaded_or_unsharded_is_checked_alike(tmp_path, products):
    vectors, ids, _ = products
    assert check(load_sharded(build(tmp_path / "idx", products)), products).metrics["positions_verified"] == N
    build_index_dir(tmp_path / "single", vectors, ids, factory="Flat")
    report = check(tmp_path / "single", products, name="color")
    assert report.passed and report.metrics["shards"] == 1 and report.metrics["positions_verified"] == N


def test_missing_urls_and_broken_images_fail_their_samples(tmp_path, products):
    vectors, ids, urls = products
    directory = build(tmp_path / "idx", products)

    def encode(batch):
        out = encoder(vectors, ids)(batch).copy()
        out[[u == "img://sku-3" for u in batch]] = np.nan  # the image no longer decodes
        return out

    report = check_alignment(directory, encode=encode, urls_by_id={i: u for i, u in urls.items() if i != "sku-4"},
                             out=lambda line: None)
    failed = [p for p in report.problems if "FAIL" in p]
    assert failed == ["[4/120] FAIL id=sku-3 | pos(id_map)=3 -> shard#0 | image could not be re-encoded",
                      "[5/120] FAIL id=sku-4 | pos(id_map)=4 -> shard#0 | no image URL for this id"]


def test_an_unreadable_index_is_a_failed_check(tmp_path, products):
    report = check(tmp_path / "nothing", products)
    assert not report.passed and report.problems[0].startswith(f"cannot read the index at {tmp_path / 'nothing'}")
