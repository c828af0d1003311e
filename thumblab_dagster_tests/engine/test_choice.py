import faiss
import pytest

from thumblab_dagster.lib.engine.choice import choose_index, estimate_bytes

GiB = 1 << 30


@pytest.mark.parametrize("n, d, budget, want", [
    (150, 512, GiB, "Flat"),                                   # a day of thumbnails
    (13_500, 512, GiB, "Flat"),                                # 90 days x 150
    (100_000, 512, GiB, "HNSW32"),
    (1_000_000, 512, 4 * GiB, "IVF4096_HNSW32,Flat"),
    (300_000, 512, 100 * 2**20, "IVF2048,PQ64"),      # vectors do not fit: compress
    (19_000_000, 128, 2 * GiB, "IVF16384_HNSW32,PQ64"),  # a geospatial mosaic's pixels
    (200_000, 67, 5 * 2**20, "PCAR64,IVF2048,PQ16"),         # music: 67 is prime, PCA-rotate to 64
])
def test_rule_table(n, d, budget, want):
    factory = choose_index(n, d, budget)
    assert factory == want
    assert estimate_bytes(factory, n, d) <= budget
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)  # a valid factory string
    assert index.d == d


def test_nlist_leaves_enough_training_points():
    factory = choose_index(30_000, 512, 2 * 2**20)  # too small for vectors: IVF-PQ
    nlist = int(factory.split("IVF")[1].split(",")[0].split("_")[0])
    assert ",PQ" in factory and 30_000 / nlist >= 39


def test_impossible_budget_says_what_to_do():
    with pytest.raises(ValueError, match="raise the budget or shard"):
        choose_index(10_000_000, 512, 1000)
    with pytest.raises(ValueError, match="metric"):
        choose_index(10, 4, GiB, metric="cosine")
