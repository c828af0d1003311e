"""The bundled sample catalogue: deterministic, several brands and colours, pictures drawn from the URL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.catalogue.sample import (
    COLOURS,
    IMAGE_SIZE,
    SAMPLE_SCHEME,
    attributes,
    sample_catalogue,
    sample_fetch_schemes,
    sample_image,
    sample_image_bytes,
)
from thumblab_dagster.lib.embed.images import CONTENT, fetch_images


def test_the_sample_is_deterministic_and_grows_by_adding_products():
    first = sample_catalogue(300)
    pd.testing.assert_frame_equal(first, sample_catalogue(300))
    pd.testing.assert_frame_equal(sample_catalogue(305).head(300), first)  # n + 5: five new products
    assert list(first.columns) == ["id", "image_url", "brand", "colour", "category", "title", "price"]
    assert first["id"].is_unique and first["image_url"].is_unique
    assert (first["image_url"] == SAMPLE_SCHEME + "://" + first["id"] + ".png").all()
    other = sample_catalogue(10, seed=1)
    assert not set(other["id"]) & set(first["id"])


def test_the_sample_has_several_brands_and_colours_each_well_represented():
    products = sample_catalogue(300)
    brands, colours = products["brand"].value_counts(), products["colour"].value_counts()
    assert len(brands) >= 4 and brands.min() >= 20
    assert len(colours) >= 6 and colours.min() >= 10
    assert "aw" in brands
    row = products.iloc[7]
    assert attributes(row["id"]) == {c: row[c] for c in ("brand", "colour", "category", "title", "price")}


def test_a_picture_is_the_same_for_the_same_url_and_differs_between_products():
    url = "sample-product://p00003.png"
    assert sample_image_bytes(url) == sample_image_bytes(url)
    assert sample_image_bytes(url) != sample_image_bytes("sample-product://p00004.png")
    assert sample_image_bytes(url) != sample_image_bytes(url + "?v=2")  # a changed image at another URL


def test_a_product_is_drawn_in_its_colour():
    for pid in ("p00000", "p00001", "p00002"):
        pixels = np.asarray(sample_image(f"sample-product://{pid}.png"))
        assert pixels.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)
        colour = COLOURS[attributes(pid)["colour"]]
        assert (pixels == colour).all(axis=-1).mean() > 0.05  # the silhouette is a good part of the picture


def test_the_image_fetcher_draws_sample_urls_and_refuses_others_in_one_line():
    urls = ["sample-product://p00001.png", "sample-product://p00001", "sample-product://"]
    ok, no_png, empty = fetch_images(urls, schemes=sample_fetch_schemes(), max_workers=1, retries=0)
    assert ok.ok and ok.image.size == IMAGE_SIZE and ok.image.mode == "RGB"
    for bad in (no_png, empty):
        assert not bad.ok and bad.kind == CONTENT and "not a sample product image URL" in bad.error
        assert "\n" not in bad.error


def test_a_negative_count_is_refused():
    with pytest.raises(ValueError, match="use a count of 0 or more"):
        sample_catalogue(-1)
