"""bf16 and int8 for CLIP: kept only where the embeddings agree with fp32's (cosine >= 0.999), recorded either way."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from thumblab_dagster.lib.embed.clip import (
    BF16,
    FP32,
    INT8,
    MIN_COSINE,
    calibration_images,
    cosine_agreement,
    embed_images,
    embed_texts,
    load_clip,
    native_bf16,
    weights_identity,
    with_precision,
)
from thumblab_dagster.lib.settings import SettingsError, load_settings

TITLES = ["how I fixed my bike in 5 minutes", "best budget phone 2026"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("ViT-B-32", "none", "cpu")


@pytest.fixture(scope="module")
def pictures():
    from PIL import Image

    # Not the calibration set: what is embedded later is other pictures.
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (90 + 30 * i, 160, 3), dtype=np.uint8)) for i in range(2)]


def test_bf16_embeddings_stay_within_cosine_0999_of_fp32(clip, pictures):
    fast = with_precision(clip, BF16, min_cosine=0.0, images=calibration_images(1), texts=TITLES[:1])  # always kept
    assert fast.precision == BF16 and next(fast.model.parameters()).dtype == torch.bfloat16
    assert clip.precision == FP32 and next(clip.model.parameters()).dtype == torch.float32  # the reference is kept
    images, texts = embed_images(fast, pictures), embed_texts(fast, TITLES)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert cosine_agreement(embed_images(clip, pictures), images)["min"] >= MIN_COSINE
    assert cosine_agreement(embed_texts(clip, TITLES), texts)["min"] >= MIN_COSINE
    info = fast.weights.as_dict()
    assert info["precision"] == BF16 and "bf16 kept" in info["precision_note"] and "min cosine" in info["precision_note"]
    # Precision is not identity: bf16 and fp32 vectors may share an index.
    assert weights_identity(info) == weights_identity(clip.weights.as_dict())
    assert info["identity"] == clip.weights.as_dict()["identity"]


def test_bf16_that_strays_falls_back_to_fp32_and_says_so(clip, pictures, caplog):
    with caplog.at_level(logging.WARNING, logger="thumblab_dagster.lib.embed.clip"):
        kept = with_precision(clip, BF16, min_cosine=1.5, images=calibration_images(1), texts=TITLES[:2])
    assert kept.precision == FP32 and kept.model is clip.model  # nothing is cast
    note = kept.weights.precision_note
    assert "below 1.5: fp32 used" in note and "1 calibration image and 2 texts" in note
    assert any("fp32 used" in record.getMessage() for record in caplog.records)
    np.testing.assert_allclose(embed_images(kept, pictures), embed_images(clip, pictures), atol=1e-6)


def test_int8_quantises_the_image_tower_and_stays_within_cosine_0999_of_fp32(clip, pictures):
    fast = with_precision(clip, INT8, min_cosine=0.0, images=calibration_images(1), texts=TITLES[:1])
    assert fast.precision == INT8 and "int8 kept" in fast.weights.precision_note
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in fast.model.visual.modules())
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in clip.model.modules())  # reference kept
    assert cosine_agreement(embed_images(clip, pictures), embed_images(fast, pictures))["min"] >= MIN_COSINE
    np.testing.assert_allclose(embed_texts(fast, TITLES), embed_texts(clip, TITLES), atol=1e-5)  # text tower: fp32
    assert weights_identity(fast.weights.as_dict()) == weights_identity(clip.weights.as_dict())
    with pytest.raises(ValueError, match="int8 CLIP runs on the CPU only"):
        with_precision(replace(clip, device="cuda"), INT8)


def test_fp32_is_the_model_as_loaded_and_auto_tries_bf16_where_native_else_int8(clip):
    assert with_precision(clip, "FP32") is clip
    auto = with_precision(clip, "auto", images=calibration_images(1), texts=TITLES[:1])
    tried = BF16 if native_bf16("cpu") else INT8
    assert auto.precision in (tried, FP32) and f"auto ({tried}) requested; min cosine" in auto.weights.precision_note


def test_the_precision_reaches_the_weights_info_through_load_clip():
    loaded = load_clip("ViT-B-32", "none", "cpu", precision="auto")
    info = loaded.weights.as_dict()
    assert info["precision"] == loaded.precision and info["precision"] in (FP32, BF16, INT8)
    assert info["precision_note"].startswith("auto")
    assert info["identity"] == "ViT-B-32|random-init"  # precision is not part of it
    assert loaded is load_clip("ViT-B-32", "none", "cpu", precision="auto")  # cached per precision
    assert loaded is not load_clip("ViT-B-32", "none", "cpu", precision="fp32")


def test_a_bad_precision_is_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown CLIP precision 'fp16' \(THUMBLAB_CLIP_PRECISION\): use fp32, "
                                         r"bf16, int8 or auto"):
        load_clip("ViT-B-32", "none", "cpu", precision="fp16")
    assert load_settings({"THUMBLAB_CLIP_PRECISION": " BF16 "}).clip_precision == BF16
    assert load_settings({}).clip_precision == FP32
    with pytest.raises(SettingsError, match="THUMBLAB_CLIP_PRECISION='fp16': use fp32, bf16, int8 or auto"):
        load_settings({"THUMBLAB_CLIP_PRECISION": "fp16"})


def test_the_pipeline_and_the_service_read_the_same_setting():
    from thumblab_dagster.defs.resources import resources_from_env
    from thumblab_dagster.service.app import ServiceSettings

    env = {"THUMBLAB_CLIP_PRECISION": "auto"}
    assert resources_from_env(env)["embedder"].precision == "auto"
    assert ServiceSettings.from_env(env, publish_dir="/tmp/unused").clip_precision == "auto"
