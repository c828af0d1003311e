"""Small vector sets and exact indices the engine tests build from."""

import faiss
import numpy as np


def unit(n, d=16, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def flat(vectors):
    """An exact inner-product index over ``vectors``, row order kept."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def write_small_index(target, prefix: str, seed: int = 0, n: int = 40, d: int = 8):
    """A checked Flat index directory of ``n`` random unit vectors with ids ``<prefix>-<i>``."""
    import pandas as pd

    from thumblab_dagster.lib.engine import index_dir

    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    ids = [f"{prefix}-{i}" for i in range(n)]
    index_dir.write_index_dir(target, flat(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)), ids,
                              factory="Flat", metric="inner_product", metadata=pd.DataFrame({"item_id": ids}),
                              id_column="item_id")
    return target
