"""The catalogue on Ray (local mode, 2 CPUs) gives what the in-process paths give; without the setting no Ray.

One local Ray for the module (starting one costs seconds). Embedding: the same rows, stats and log lines
as ``embed_products`` (vectors within 1e-5); shards: the same faiss indices, byte for byte, as the
engine's ``labelled_part`` + ``add_batches`` from one trained empty index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import faiss
import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.catalogue.embeddings import batch_line, brand_lines, embed_stats
from thumblab_dagster.lib.collections.catalogue.ray_backend import (
    ray_build_catalogue_index,
    ray_build_shards,
    ray_embed,
    ray_init,
    root_cause,
)
from thumblab_dagster.lib.collections.catalogue.shards import SEED_ID_MAP, build_catalogue_index
from thumblab_dagster.lib.engine.build import add_batches, train_empty
from thumblab_dagster.lib.engine.shards import labelled_part, load_sharded, plan_shards
from thumblab_dagster.lib.engine.sources import open_source
from thumblab_dagster.lib.settings import SettingsError, load_settings
from thumblab_dagster_tests.collections.catalogue.conftest import TEST_CLIP

MODEL, PRETRAINED, DEVICE = TEST_CLIP


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # log_to_driver off: the actors' CLIP warnings would only clutter the test output
    ray_init("local", num_cpus=2, object_store_memory=200 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


# --- embedding -------------------------------------------------------------------------------

def test_ray_embedding_equals_in_process(local_ray, sample_products, sample_embeddings, fetch):
    """Same rows in the same order, same stats; a broken image skipped and counted as in-process."""
    broken = pd.DataFrame([{**sample_products.iloc[0].to_dict(), "id": "broken-1",
                            "image_url": "sample-product://not-a-product"}])
    products = pd.concat([sample_products, broken], ignore_index=True)
    lines: list[str] = []
    got, stats = ray_embed(products, model=MODEL, pretrained=PRETRAINED, device=DEVICE, batch_size=16,
                           fetch=fetch, log=lines.append)

    want = sample_embeddings  # in-process, batch_size=16: the broken row (last) changes no batch's images
    assert list(got.columns) == list(want.columns) and got.dtypes.equals(want.dtypes)
    assert got["id"].tolist() == want["id"].tolist()
    plain = [c for c in want.columns if c not in ("embedding", "embedded_at")]
    pd.testing.assert_frame_equal(got[plain], want[plain])
    assert got["embedded_at"].nunique() == 1  # one time for the run, as in-process
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5, rtol=0)

    expected = embed_stats(len(products), want, [])
    assert {k: stats[k] for k in ("total", "embedded", "per_brand")} == \
           {k: expected[k] for k in ("total", "embedded", "per_brand")}
    assert stats["broken"] == 1 and stats["broken_examples"][0].startswith("broken-1: ")
    assert batch_line(3, len(products), len(want)) in lines  # 41 products in batches of 16: three batches
    assert sum(line.startswith("Batch ") for line in lines) == 3
    assert lines[-len(expected["per_brand"]):] == brand_lines(expected["per_brand"])
    assert any(line.startswith("skipped the image of broken-1 (content)") for line in lines)


def test_over_ray_client_the_same_actors_run_on_an_actor_pool(local_ray, sample_products, sample_embeddings, fetch,
                                                               monkeypatch):
    """Ray Data does not run over Ray Client (ray://): there the actors are driven by ray.util.ActorPool."""
    import thumblab_dagster.lib.collections.catalogue.ray_backend as backend

    monkeypatch.setattr(backend, "_over_ray_client", lambda: True)
    monkeypatch.setattr(backend, "_on_ray_data", None)  # not reached
    products = sample_products.iloc[:12]
    got, stats = ray_embed(products, model=MODEL, pretrained=PRETRAINED, device=DEVICE, batch_size=4, fetch=fetch,
                           actors=2, log=lambda line: None)
    want = sample_embeddings.iloc[:12]
    assert got["id"].tolist() == want["id"].tolist() and stats["embedded"] == 12 and stats["broken"] == 0
    # other batch companions than in-process (4, not 16 a batch): equal within float noise
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), atol=1e-5, rtol=0)


def test_an_actors_error_is_one_line_naming_its_cause():
    """Ray's error text is the actor's whole traceback; the line kept is the innermost error."""
    ray_text = ("The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker(...)\x1b[39m\n"
                "Traceback (most recent call last):\n  File \"clip.py\", line 202, in _load_fp32\n"
                "    raise ValueError(f\"unknown open_clip model ...\")\n"
                "ValueError: unknown open_clip model 'ViT-Nope' (THUMBLAB_CLIP_MODEL); see open_clip.list_models()\n")
    assert root_cause(RuntimeError(ray_text)) == \
        "ValueError: unknown open_clip model 'ViT-Nope' (THUMBLAB_CLIP_MODEL); see open_clip.list_models()"
    assert root_cause(RuntimeError("the node died\n")) == "the node died"


def test_ray_embedding_of_nothing_needs_no_ray():
    got, stats = ray_embed(pd.DataFrame(columns=["id", "image_url", "brand"]), log=lambda line: None)
    assert got.empty and stats["total"] == 0 and stats["embedded"] == 0


# --- shards ----------------------------------------------------------------------------------

def _in_process(empty: faiss.Index, vectors: np.ndarray, shards: list[dict]) -> list[faiss.Index]:
    """What build_index_dir does with a shard plan: labelled copies of one trained index, filled in batches.

    On one faiss thread, as each Ray task (1 CPU) runs: the thread count may move a vector exactly tied
    between two lists (BLAS sums in another order), so byte equality is asked at the same count.
    """
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        parts = [labelled_part(empty) for _ in shards]
        add_batches(parts, shards, open_source(vectors), batch_size=512)
    finally:
        faiss.omp_set_num_threads(threads)
    return parts


def _labels(part: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(part.id_map)


@pytest.fixture(scope="module")
def trained():
    vectors = np.random.default_rng(3).standard_normal((3000, 32)).astype(np.float32)
    empty, _ = train_empty("IVF8,SQ8", "l2", open_source(vectors))
    return empty, vectors


def test_ray_shards_equal_the_in_process_build(local_ray, trained, tmp_path):
    empty, vectors = trained
    shards = plan_shards(len(vectors), 700)  # 5 shards, the last one partly full
    want = _in_process(empty, vectors, shards)
    npy = tmp_path / "vectors.npy"
    np.save(npy, vectors)
    for got in (ray_build_shards(empty, vectors, shards),
                ray_build_shards(empty, npy, shards, max_in_flight=1)):  # streamed from a file, one shard at a time
        assert len(got) == len(shards)
        for shard, part, ref in zip(shards, got, want):
            assert part.ntotal == shard["count"]
            np.testing.assert_array_equal(_labels(part), np.arange(shard["offset"], shard["offset"] + shard["count"]))
            np.testing.assert_array_equal(_labels(part), _labels(ref))
            codes = faiss.serialize_index(part)
            assert np.array_equal(codes, faiss.serialize_index(ref))  # same lists, codes and ids: the same index
    assert empty.ntotal == 0  # the trained index was copied, never filled

    queries = vectors[::97]
    for part, ref in zip(got, want):  # and they search alike (the stored vectors within float tolerance)
        distances, labels = part.search(queries, 5)
        ref_distances, ref_labels = ref.search(queries, 5)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_allclose(distances, ref_distances, atol=1e-5)


def test_a_full_catalogue_build_on_ray_equals_the_in_process_one(local_ray, tmp_path):
    """The engine trains once and writes; only the filling of the shards moves to Ray tasks."""
    vectors = np.random.default_rng(5).standard_normal((600, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i:05d}" for i in range(600)]
    build_catalogue_index(tmp_path / "in", vectors, ids, shard_size=250)
    manifest = ray_build_catalogue_index(tmp_path / "ray", vectors, ids, shard_size=250)
    ours, theirs = load_sharded(tmp_path / "in"), load_sharded(tmp_path / "ray")
    assert manifest.shards == ours.manifest.shards and len(manifest.shards) == 3
    assert theirs.ids.tolist() == ours.ids.tolist() == ids
    assert (tmp_path / "ray" / SEED_ID_MAP).read_text() == (tmp_path / "in" / SEED_ID_MAP).read_text()
    for part, ref in zip(theirs.shards, ours.shards):
        np.testing.assert_array_equal(_labels(part), _labels(ref))
    np.testing.assert_allclose(np.stack([theirs.reconstruct(i) for i in range(600)]), vectors, atol=1e-5)
    np.testing.assert_array_equal(theirs.search(vectors[::50], 3)[1], ours.search(vectors[::50], 3)[1])


def test_bad_shard_plans_are_one_clear_line(trained):
    empty, vectors = trained
    with pytest.raises(ValueError, match="shards cover 2,100 rows but there are 3,000 vectors: pass plan_shards"):
        ray_build_shards(empty, vectors, plan_shards(2100, 700))
    gap = plan_shards(3000, 1000)
    gap[1] = {**gap[1], "offset": 1200}
    with pytest.raises(ValueError, match="expected to start at 1000"):
        ray_build_shards(empty, vectors, gap)
    filled = faiss.clone_index(empty)
    filled.add(vectors[:10])
    with pytest.raises(ValueError, match="needs a trained, empty index"):
        ray_build_shards(filled, vectors, plan_shards(3000, 1000))
    assert ray_build_shards(empty, vectors[:0], []) == []  # nothing to build: Ray is not needed


# --- the setting ----------------------------------------------------------------------------

def test_the_ray_address_setting():
    assert load_settings({}).ray_address is None
    for value in ("local", "ray://head:10001", "10.0.0.5:6379"):
        assert load_settings({"THUMBLAB_RAY_ADDRESS": value}).ray_address == value
    with pytest.raises(SettingsError, match=r"THUMBLAB_RAY_ADDRESS='http://head:8265': use local, or a Ray cluster"):
        load_settings({"THUMBLAB_RAY_ADDRESS": "http://head:8265"})


def test_a_missing_cluster_token_is_one_line(monkeypatch):
    """A cluster with token authentication and no token here (Ray raises its AuthenticationError, a page of
    advice): one line naming the setting and where the token goes."""
    import ray
    import ray.exceptions

    def refuse(*args, **kwargs):
        raise ray.exceptions.AuthenticationError("Token authentication is enabled but Ray couldn't find an "
                                                 "authentication token. Create a token file at ~/.ray/auth_token")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # this process may hold the tests' local Ray
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConnectionError) as caught:
        ray_init("ray://head:10001")
    assert str(caught.value) == (
        "THUMBLAB_RAY_ADDRESS='ray://head:10001': Ray's token authentication failed: give this machine the cluster's "
        "token (~/.ray/auth_token or RAY_AUTH_TOKEN), or unset RAY_AUTH_MODE for a cluster started without a token")


def test_a_refused_client_session_is_tried_once_more_then_one_line(monkeypatch):
    """Ray Client's "Initialization failure from server" (its reason on the next line): a second try, then the
    reason on the one line."""
    import ray

    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs)
        raise ConnectionAbortedError("Initialization failure from server:\nspecific server did not start")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConnectionError) as caught:
        ray_init("ray://head:10001")
    assert len(calls) == 2
    assert str(caught.value).startswith("THUMBLAB_RAY_ADDRESS='ray://head:10001': cannot join the Ray cluster "
                                        "(Initialization failure from server: specific server did not start); ")

    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs) if calls else refuse(**kwargs))
    ray_init("ray://head:10001")  # the second try joins
    assert len(calls) == 2


def test_nothing_imports_ray_without_the_setting():
    """Every catalogue module (and its Dagster definitions, once they exist) imports without Ray."""
    code = """
import importlib, importlib.util, json, pkgutil, sys
import thumblab_dagster.lib.collections.catalogue as package
names = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
names += [n for n in ("thumblab_dagster.defs.catalogue",) if importlib.util.find_spec(n)]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}))
"""
    env = {k: v for k, v in os.environ.items() if k != "THUMBLAB_RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "thumblab_dagster.lib.collections.catalogue.ray_backend" in report["imported"]
    assert report["ray"] == []
