"""Incremental product embeddings: plan, embed (broken images skipped and counted, the seed's lines), merge,
and the parquet file; a second run embeds only what is new, leaving every other vector bit-identical."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.catalogue.embeddings import (
    EMBEDDINGS,
    embed_products,
    merge,
    model_identity,
    plan,
    read_product_embeddings,
    vectors_of,
    write_product_embeddings,
)
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue, sample_image
from thumblab_dagster.lib.embed.clip import embed_images


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, line: str) -> None:
        self.lines.append(("info", line))

    def warning(self, line: str) -> None:
        self.lines.append(("warning", line))

    def said(self, level: str) -> list[str]:
        return [line for lvl, line in self.lines if lvl == level]


class CountingFetch:
    """The real fetcher, recording every URL it is asked for."""

    def __init__(self, fetch):
        self.fetch, self.urls = fetch, []

    def __call__(self, urls):
        self.urls.extend(urls)
        return self.fetch(urls)


def frame_of(ids, urls=None, model="m", versions=None) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "image_url": urls or [f"u/{i}" for i in ids], "model": model,
                         "image_version": versions or [""] * len(ids)})


# --- plan --------------------------------------------------------------------------------------------------

def test_the_plan_marks_new_changed_kept_and_deleted():
    previous = frame_of(["a", "b", "c", "d"])
    products = pd.DataFrame({"id": ["e", "b", "a", "c"], "image_url": ["u/e", "u/b", "u/a-2", "u/c"]})
    p = plan(products, previous, "m")
    assert (p.new, p.changed, p.kept, p.deleted) == (["e"], ["a"], ["b", "c"], ["d"])
    assert p.to_embed == ["e", "a"] and p.rows_to_embed(products)["id"].tolist() == ["e", "a"]
    assert p.summary() == "1 new, 1 changed, 2 kept, 1 deleted"


def test_a_new_model_re_embeds_everything_and_no_previous_means_all_new():
    products = pd.DataFrame({"id": ["a", "b"], "image_url": ["u/a", "u/b"]})
    previous = frame_of(["a", "b"], model="ViT-B-32|random-init")
    p = plan(products, previous, "ViT-B-32|laion2b_s34b_b79k")
    assert (p.new, p.changed, p.kept, p.to_embed) == ([], ["a", "b"], [], ["a", "b"])
    assert plan(products, None, "m").new == ["a", "b"]
    assert plan(products, frame_of(["a", "b"]).head(0), "m").new == ["a", "b"]


def test_a_changed_image_version_or_update_time_at_the_same_url_re_embeds():
    previous = frame_of(["a", "b", "c"], versions=["1", "1", ""])
    versioned = pd.DataFrame({"id": ["a", "b", "c"], "image_url": ["u/a", "u/b", "u/c"],
                              "image_version": [1, 2, 5], "updated_at": ["x", "y", "z"]})
    assert plan(versioned, previous, "m").changed == ["b"]  # c had no version recorded: not a change
    updated = versioned.drop(columns="image_version").assign(updated_at=["1", "2", None])
    assert plan(updated, previous, "m").changed == ["b"]


# --- embedding ---------------------------------------------------------------------------------------------

def test_embedding_skips_broken_images_counts_them_and_logs_the_seeds_lines(tmp_path, fetch, catalogue_clip):
    (tmp_path / "not-an-image.png").write_text("hello")
    products = sample_catalogue(10)
    products.loc[3, "image_url"] = str(tmp_path / "not-an-image.png")
    products.loc[7, "image_url"] = str(tmp_path / "missing.png")
    log = Log()
    frame, stats = embed_products(products, fetch, catalogue_clip, batch_size=4, log=log)
    assert list(frame.columns) == list(EMBEDDINGS)
    assert frame["id"].tolist() == [p for i, p in enumerate(products["id"]) if i not in (3, 7)]
    assert (stats["total"], stats["embedded"], stats["broken"]) == (10, 8, 2)
    assert stats["failures"] == {"content: not a readable image (UnidentifiedImageError)": 1,
                                 "content: file not found": 1}
    assert log.said("info")[:3] == ["Batch 1: Total=10, Embedded=3", "Batch 2: Total=10, Embedded=6",
                                    "Batch 3: Total=10, Embedded=8"]
    brands = frame["brand"].value_counts()
    assert stats["per_brand"] == {b: int(brands[b]) for b in sorted(brands.index)}
    assert log.said("info")[3:] == [f"{b}: {n} new vector{'s' * (n > 1)}" for b, n in sorted(stats["per_brand"].items())]
    warnings = log.said("warning")
    assert any(products.loc[3, "id"] in w and "not a readable image" in w for w in warnings)
    assert warnings[-1].startswith("2 of 10 images broken and skipped")
    assert frame["model"].unique().tolist() == [model_identity(catalogue_clip)] == ["ViT-S-32|random-init"]
    assert frame["embedded_at"].nunique() == 1 and str(frame["embedded_at"].dt.tz) == "UTC"


def test_the_vectors_are_the_thumbnails_embedders_for_the_same_pictures(sample_embeddings, catalogue_clip):
    head = sample_embeddings.head(3)
    direct = embed_images(catalogue_clip, [sample_image(u) for u in head["image_url"]])
    np.testing.assert_allclose(vectors_of(head), direct, atol=1e-5)
    assert vectors_of(head).shape == (3, catalogue_clip.dim)
    assert np.allclose(np.linalg.norm(vectors_of(sample_embeddings), axis=1), 1.0, atol=1e-4)
    assert sample_embeddings["image_sha256"].is_unique and sample_embeddings["image_sha256"].str.len().eq(64).all()


def test_a_second_run_embeds_only_the_five_new_products(tmp_path, sample_products, sample_embeddings, fetch,
                                                        catalogue_clip):
    path = tmp_path / "embeddings.parquet"
    write_product_embeddings(path, sample_embeddings, catalogue_clip.weights.as_dict())
    previous, info = read_product_embeddings(path)
    assert info["dim"] == catalogue_clip.dim
    grown = sample_catalogue(len(sample_products) + 5)
    p = plan(grown, previous, model_identity(catalogue_clip))
    assert p.counts() == {"new": 5, "changed": 0, "kept": len(sample_products), "deleted": 0}
    counting, log = CountingFetch(fetch), Log()
    embedded, stats = embed_products(p.rows_to_embed(grown), counting, catalogue_clip, log=log)
    assert counting.urls == grown["image_url"].tolist()[-5:] and stats["embedded"] == 5
    assert log.said("info")[0] == "Batch 1: Total=5, Embedded=5"
    merged = merge(previous, embedded, p)
    write_product_embeddings(path, merged)
    again, _ = read_product_embeddings(path)
    assert again["id"].tolist() == grown["id"].tolist()
    old, new = vectors_of(again.head(len(sample_products))), vectors_of(sample_embeddings)
    assert old.tobytes() == new.tobytes()  # bit-identical, through two parquet writes
    pd.testing.assert_frame_equal(again.head(len(sample_products)).drop(columns="embedding"),
                                  previous.drop(columns="embedding"))
    assert plan(grown, again, model_identity(catalogue_clip)).to_embed == []


def test_a_changed_image_is_replaced_in_place_and_deleted_products_leave(sample_products, sample_embeddings, fetch,
                                                                         catalogue_clip):
    products = sample_products.drop(index=[1, 2]).reset_index(drop=True)
    products.loc[0, "image_url"] += "?v=2"
    products.loc[4, "image_url"] = "sample-product://nope"  # its new image is broken: it leaves until it works
    p = plan(products, sample_embeddings, model_identity(catalogue_clip))
    assert p.deleted == sample_products["id"].tolist()[1:3]
    assert p.changed == products["id"].tolist()[0:1] + products["id"].tolist()[4:5]
    embedded, stats = embed_products(p.rows_to_embed(products), fetch, catalogue_clip, log=lambda line: None)
    assert (stats["embedded"], stats["broken"]) == (1, 1)
    merged = merge(sample_embeddings, embedded, p)
    expected = [pid for pid in products["id"] if pid != products.loc[4, "id"]]
    assert merged["id"].tolist() == expected
    first = merged.iloc[0]
    assert first["image_url"].endswith("?v=2")
    assert not np.array_equal(first["embedding"], sample_embeddings.iloc[0]["embedding"])
    assert first["image_sha256"] != sample_embeddings.iloc[0]["image_sha256"]
    kept = merged["id"].isin(set(p.kept))
    assert vectors_of(merged[kept]).tobytes() == \
        vectors_of(sample_embeddings[sample_embeddings["id"].isin(set(p.kept))]).tobytes()


def test_merge_refuses_rows_the_plan_did_not_ask_for(sample_embeddings):
    p = plan(pd.DataFrame({"id": ["p00000"], "image_url": ["x"]}), None, "m")
    with pytest.raises(ValueError, match=r"^1 embedded rows are not in the plan \(e.g. 'p00001'\): embed plan"):
        merge(None, sample_embeddings.iloc[1:2], p)


def test_nothing_to_embed_writes_and_reads_an_empty_file(tmp_path, fetch, catalogue_clip):
    embedded, stats = embed_products(sample_catalogue(0), fetch, catalogue_clip, log=lambda line: None)
    assert len(embedded) == 0 and stats == {**stats, "total": 0, "embedded": 0, "broken": 0, "per_brand": {}}
    path = write_product_embeddings(tmp_path / "empty.parquet", embedded, dim=catalogue_clip.dim)
    frame, info = read_product_embeddings(path)
    assert list(frame.columns) == list(EMBEDDINGS) and len(frame) == 0 and info["dim"] == catalogue_clip.dim
    with pytest.raises(ValueError, match="needs dim="):
        write_product_embeddings(tmp_path / "x.parquet", embedded)
    with pytest.raises(FileNotFoundError, match="materialise product_embeddings for that catalogue first"):
        read_product_embeddings(tmp_path / "missing.parquet")
