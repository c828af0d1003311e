import numpy as np
import pandas as pd
import pytest

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.clip import embed_images, embed_texts, load_clip, read_embeddings, write_embeddings


@pytest.fixture(scope="module")
def clip():
    return load_clip("ViT-B-32", "none", "cpu")


def test_random_weights_are_reported_not_hidden(clip):
    assert clip.weights.loaded is False
    assert clip.weights.source == "random-init"
    assert "none" in clip.weights.note


def test_offline_pretrained_tag_falls_back_to_random_weights_and_says_why():
    # conftest sets HF_HUB_OFFLINE: the tag's weights are not cached, so they cannot be had.
    loaded = load_clip("ViT-B-32", "laion2b_s34b_b79k", "cpu")
    assert loaded.weights.loaded is False
    assert "laion2b_s34b_b79k" in loaded.weights.note and "not in the local cache" in loaded.weights.note
    assert loaded.dim == 512


def test_image_embeddings_are_unit_norm_ordered_and_deterministic(clip):
    images = [render_thumbnail(n, f"vid{i}") for i, n in enumerate(["tech", "gaming", "education"])]
    a = embed_images(clip, images, batch_size=2)
    b = embed_images(clip, images[::-1], batch_size=3)[::-1]
    assert a.shape == (3, 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch size and order do not change a vector
    assert not np.allclose(a[0], a[1])


def test_random_init_is_seeded_so_runs_agree(clip):
    load_clip.cache_clear()
    again = load_clip("ViT-B-32", "none", "cpu")
    img = [render_thumbnail("people", "x")]
    np.testing.assert_allclose(embed_images(clip, img), embed_images(again, img), atol=1e-5)


def test_text_embeddings(clip):
    t = embed_texts(clip, ["a gaming thumbnail", "a cooking video"])
    assert t.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_bad_configuration_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("ViT-Nope", "none", "cpu")
    with pytest.raises(ValueError, match="known tags: .*laion2b_s34b_b79k"):
        load_clip("ViT-B-32", "not-a-tag", "cpu")
    with pytest.raises(FileNotFoundError, match="THUMBLAB_CLIP_PRETRAINED"):
        load_clip("ViT-B-32", str(tmp_path / "missing.pt"), "cpu")


def test_embeddings_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"video_id": ["a", "b"], "title": ["x", "y"]})
    vectors = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    path = write_embeddings(tmp_path / "e.parquet", frame, vectors, {"model": "m", "loaded": False})
    got_frame, got_vectors, info = read_embeddings(path)
    assert got_frame["video_id"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(got_vectors, vectors)
    assert got_vectors.flags["C_CONTIGUOUS"]
    assert info == {"model": "m", "loaded": False, "dim": 8, "normalized": True}
    with pytest.raises(ValueError, match="2 rows"):
        write_embeddings(tmp_path / "bad.parquet", frame, vectors[:1], {})
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(FileNotFoundError, match="materialise thumbnail_embeddings"):
        read_embeddings(tmp_path / "absent.parquet")
