"""Shared by the catalogue tests: a small random-weight CLIP, the sample catalogue, its embeddings, a fetcher.

ViT-S-32 on random (seeded) weights: the real open_clip path at a quarter of ViT-B-32's cost, so the
tests stay fast; its vectors are deterministic, which is all alignment and merging need.
"""

from __future__ import annotations

import pytest

from thumblab_dagster.lib.collections.catalogue.embeddings import embed_products, product_fetcher
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue
from thumblab_dagster.lib.embed.clip import load_clip

TEST_CLIP = ("ViT-S-32", "none", "cpu")  # model, pretrained ("none": random, seeded), device
SAMPLE_PRODUCTS = 40


@pytest.fixture(scope="session")
def catalogue_clip():
    """The catalogue tests' CLIP: ViT-S-32, random seeded weights, CPU (384-d vectors)."""
    return load_clip(*TEST_CLIP)


@pytest.fixture(scope="session")
def fetch():
    """The product image fetcher (sample-product:// drawn in-process), no retries, no backoff."""
    return product_fetcher(max_workers=2, retries=0, backoff_factor=0.0)


@pytest.fixture(scope="session")
def sample_products():
    """The first SAMPLE_PRODUCTS products of the sample catalogue (a prefix of every larger one)."""
    return sample_catalogue(SAMPLE_PRODUCTS)


@pytest.fixture(scope="session")
def sample_embeddings(sample_products, fetch, catalogue_clip):
    """The sample products' embeddings frame (EMBEDDINGS columns, one 384-d unit vector per product)."""
    frame, stats = embed_products(sample_products, fetch, catalogue_clip, batch_size=16, log=lambda line: None)
    assert stats["broken"] == 0
    return frame
