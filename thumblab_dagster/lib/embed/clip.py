"""CLIP embeddings with open_clip: one model loader, one image path, one parquet format.

Weights come from an open_clip pretrained tag (looked up in the local Hugging Face cache
first, downloaded when the hub is reachable) or a local checkpoint file. When neither is
possible the model runs on random-initialised weights and says so in ``WeightsInfo``, so
the pipeline keeps working offline and the UI shows that the vectors are not meaningful.

The forwards run in fp32, or in a faster precision where that keeps the embeddings
(``with_precision``): bf16 (fast only where the hardware computes it) or int8 (dynamic int8
quantisation of the Linear layers, CPU) is tried on calibration images and texts at load and kept
only when every embedding's cosine to fp32's is at least ``MIN_COSINE``; the precision used is
recorded in ``WeightsInfo``. int8 quantises each forward's activations with one scale per batch,
so a row may move slightly (within that cosine) with its batch companions; fp32 and bf16 rows do not.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from thumblab_dagster.lib.engine.files import atomic_path
from thumblab_dagster.lib.settings import SETTING

log = logging.getLogger(__name__)

# Declared in lib/settings.py (THUMBLAB_CLIP_*); these are the defaults for direct callers.
DEFAULT_MODEL = SETTING["clip_model"].default
DEFAULT_PRETRAINED = SETTING["clip_pretrained"].default
DEFAULT_DEVICE = SETTING["clip_device"].default
DEFAULT_BATCH_SIZE = SETTING["clip_batch_size"].default
FP32, BF16, INT8, AUTO = "fp32", "bf16", "int8", "auto"
PRECISIONS = (FP32, BF16, INT8, AUTO)
DEFAULT_PRECISION = SETTING["clip_precision"].default
MIN_COSINE = 0.999  # bf16 is kept only when every calibration embedding is at least this close to fp32's
RANDOM_WEIGHTS = "none"
SCHEMA_KEY = b"thumblab"
EMBEDDING_COLUMN = "embedding"
TITLE_EMBEDDING_COLUMN = "title_embedding"  # CLIP text-tower vector of each row's title (title percentiles)


@dataclass(frozen=True)
class WeightsInfo:
    model: str
    pretrained: str          # what was asked for: a tag, a checkpoint path, or "none"
    loaded: bool             # True only when real weights were loaded
    source: str              # where the weights came from, or "random-init"
    note: str = ""
    # The forwards' precision and why. Not part of the identity (``weights_identity``): bf16 is kept
    # only when its embeddings stay at cosine >= MIN_COSINE to fp32's, so vectors of either
    # precision rank alike and may share an index.
    precision: str = FP32
    precision_note: str = ""

    def as_dict(self) -> dict:
        info = asdict(self)
        return {**info, "identity": weights_label(info)}  # what the engine compares before mixing vectors


def weights_identity(info: dict | None) -> tuple:
    """What makes two embeddings comparable: the model and the weights actually loaded.

    Random-initialised weights are seeded, so every random-init run of a model is alike,
    whatever tag was asked for; loaded weights are named by the tag or checkpoint asked for.
    """
    info = info or {}
    return (info.get("model"), info.get("pretrained") if info.get("loaded") else "random-init")


def describe_weights(info: dict | None) -> str:
    """A model and its weights for people: ``ViT-B-32 (random-initialised weights)``."""
    model, weights = weights_identity(info)
    return f"{model} ({'random-initialised weights' if weights == 'random-init' else weights})"


LABEL_SEPARATOR = "|"  # model names (hf-hub:org/name) and checkpoint paths hold "/", never "|"


def weights_label(info: dict | None) -> str:
    """``weights_identity`` as one string (``ViT-B-32|laion2b_s34b_b79k``, ``ViT-B-32|random-init``),
    for stores that keep a model column beside each vector."""
    return LABEL_SEPARATOR.join(str(part) for part in weights_identity(info))


def info_from_label(label: str) -> dict:
    """The inverse of ``weights_label``: enough of a ``WeightsInfo`` dict to compare identities."""
    model, _, weights = str(label).partition(LABEL_SEPARATOR)
    if weights == "random-init":
        return {"model": model, "pretrained": RANDOM_WEIGHTS, "loaded": False, "source": "random-init", "identity": str(label)}
    return {"model": model, "pretrained": weights, "loaded": True, "source": weights, "identity": str(label)}


def _is_random_request(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in ("", "none", "random")


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _host_reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hub_offline() -> bool:
    """Honour huggingface_hub's own switch: no download attempts at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached_hub_weights(hf_hub: str, cache_dir: str | None) -> str | None:
    """The local path of a tag's weights if the Hugging Face cache already holds them."""
    from huggingface_hub import hf_hub_download
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    # open_clip's convention: "org/model/" (trailing slash) means the default file names.
    model_id, filename = os.path.split(hf_hub)
    candidates = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    for name in candidates:
        try:
            return hf_hub_download(model_id, name, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # not cached (the hub library raises several types)
            continue
    return None


@dataclass
class LoadedClip:
    model: object
    preprocess: Callable
    tokenizer: Callable
    device: str
    dim: int
    weights: WeightsInfo
    lock: threading.Lock

    @property
    def precision(self) -> str:
        """The precision the model's forwards run in (``fp32`` or ``bf16``)."""
        return self.weights.precision

    @property
    def dtype(self):
        """The torch dtype of the model's parameters, which its inputs are cast to."""
        import torch

        return torch.bfloat16 if self.precision == BF16 else torch.float32


def resolve_device(device: str) -> str:
    import torch

    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_precision(precision: str | None) -> str:
    """``fp32``, ``bf16``, ``int8`` or ``auto`` (any case; None or blank is the default), or one clear ValueError."""
    value = str(precision or DEFAULT_PRECISION).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"unknown CLIP precision {precision!r} (THUMBLAB_CLIP_PRECISION): use fp32, bf16, int8 or auto")
    return value


@functools.lru_cache(maxsize=4)
def load_clip(model_name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str = DEFAULT_DEVICE, cache_dir: str | None = None, precision: str = DEFAULT_PRECISION,
              min_cosine: float = MIN_COSINE) -> LoadedClip:
    """Load (once per process and precision) an open_clip model, its preprocessing and tokenizer.

    ``precision``: ``fp32``; ``bf16`` or ``int8``, kept only when the calibration embeddings stay at
    cosine >= ``min_cosine`` to fp32's (else fp32, with a warning); ``auto``, bf16 where the device
    computes it natively, else int8 on a CPU, each under the same check. ``weights.precision``
    says which runs, ``weights.precision_note`` why.
    """
    precision = check_precision(precision)
    return with_precision(_load_fp32(model_name, pretrained, device, cache_dir), precision, min_cosine=min_cosine)


def _load_fp32(model_name: str, pretrained: str | None, device: str, cache_dir: str | None) -> LoadedClip:
    import open_clip

    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r} (THUMBLAB_CLIP_MODEL); "
                         f"see open_clip.list_models(), e.g. {DEFAULT_MODEL}")
    device = resolve_device(device)
    requested = RANDOM_WEIGHTS if _is_random_request(pretrained) else str(pretrained)
    kwargs: dict = {}
    weights_arg: str | None = None
    note = ""
    if requested == RANDOM_WEIGHTS:
        note = "random weights requested (THUMBLAB_CLIP_PRETRAINED=none)"
    elif _looks_like_path(requested):
        if not Path(requested).expanduser().is_file():
            raise FileNotFoundError(f"CLIP checkpoint {requested!r} (THUMBLAB_CLIP_PRETRAINED) does not "
                                    "exist: point it at a local .pt/.bin/.safetensors file or an "
                                    "open_clip pretrained tag")
        weights_arg = str(Path(requested).expanduser())
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, requested)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise ValueError(f"unknown pretrained tag {requested!r} for {model_name} "
                             f"(THUMBLAB_CLIP_PRETRAINED); known tags: {tags}")
        cached = _cached_hub_weights(cfg["hf_hub"], cache_dir) if cfg.get("hf_hub") else None
        host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
        if cached:
            weights_arg = cached
            # A path loses the tag's preprocessing settings: pass them explicitly.
            kwargs = {"image_mean": cfg.get("mean"), "image_std": cfg.get("std"),
                      "image_interpolation": cfg.get("interpolation"),
                      "image_resize_mode": cfg.get("resize_mode")}
        elif _hub_offline():
            note = f"weights {requested!r} are not in the local cache and HF_HUB_OFFLINE is set"
        elif host and _host_reachable(host):
            weights_arg = requested
        else:
            note = (f"weights {requested!r} are not in the local cache and {host or 'the hub'} is "
                    "unreachable (offline?)")
    model = None
    if weights_arg is not None:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights_arg, device=device, cache_dir=cache_dir, **kwargs)
        except Exception as exc:  # a failed download or a bad checkpoint: fall back, loudly
            note = f"could not load weights {requested!r}: {type(exc).__name__}: {str(exc)[:200]}"
            model = None
    loaded = model is not None
    if model is None:
        import torch

        # Seeded, so random-weight embeddings from different runs and dates stay comparable.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None,
                                                                         device=device)
        log.warning("CLIP %s runs on RANDOM-INITIALISED weights: %s. Embeddings are not "
                    "semantically meaningful.", model_name, note)
    model.eval()
    dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
        else int(model.visual.output_dim)
    weights = WeightsInfo(model=model_name, pretrained=requested, loaded=loaded,
                          source=weights_arg if loaded else "random-init", note=note)
    return LoadedClip(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(model_name),
                      device=device, dim=dim, weights=weights, lock=threading.Lock())


# --- precision ------------------------------------------------------------------------------

# Titles like the ones scored: short, mixed case, digits and punctuation.
CALIBRATION_TEXTS = ("I built a mechanical keyboard from scratch", "10 MINUTE beginner workout (no equipment!)",
                     "The best budget gaming PC in 2026?", "Why the Roman Empire really fell", "vlog #12")


def calibration_images(n: int = 4, size: tuple[int, int] = (320, 180)) -> list[Image.Image]:
    """``n`` deterministic thumbnail-like pictures (gradients, noise, shapes, text), drawn with PIL alone."""
    rng = np.random.default_rng(12)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for i in range(n):
        base = np.stack([x * 255 // width, y * 255 // height, ((x + y) * (i + 2)) % 256], axis=-1)
        pixels = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(np.roll(pixels, i, axis=-1))
        draw = ImageDraw.Draw(image)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([width // 8 * (i % 4), height // 6, width // 2 + 20 * i, height - 20], fill=colour)
        draw.rectangle([width // 2, height // 2, width - 10, height - 10], outline=(255, 255, 255), width=4)
        draw.text((12, 12), f"TOP {i + 1} TIPS!", fill=(255, 255, 0))
        images.append(image)
    return images


def native_bf16(device: str) -> bool:
    """True where bf16 runs in hardware, the only place it is faster than fp32: a GPU that supports
    it, or a CPU with AVX-512 BF16 or AMX. (oneDNN also reports bf16 support where it emulates it
    on plain AVX-512, so on Linux the CPU's own flags decide.)"""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # a torch without the check: assume not
        return False
    flags = _cpu_flags()
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & flags)


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def cosine_agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Row-wise cosine of two sets of unit vectors: min and mean (how far a fast path strays)."""
    cosines = np.sum(np.asarray(reference, np.float64) * np.asarray(other, np.float64), axis=1)
    return {"min": float(cosines.min()), "mean": float(cosines.mean()), "n": int(len(cosines))}


def as_int8(clip: LoadedClip) -> LoadedClip:
    """An int8 copy of ``clip`` (dynamic quantisation of the image tower's Linear layers; CPU only), unchecked.
    Use ``with_precision``, which keeps it only where it agrees; this is for measuring (benchmarks)."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    if clip.device != "cpu":
        raise ValueError(f"int8 CLIP runs on the CPU only, not {clip.device}: use fp32 or bf16 there")
    with warnings.catch_warnings():  # torch points eager quantisation users at torchao; it still works as documented
        warnings.simplefilter("ignore")
        model = copy.deepcopy(clip.model)
        # the image tower only: it is most of the cost, and open_clip's text tower reads its Linear
        # weights' dtype, which a quantised Linear no longer has as a tensor
        model.visual = quantize_dynamic(model.visual, {torch.nn.Linear}, dtype=torch.qint8)
    return replace(clip, model=model, weights=replace(clip.weights, precision=INT8), lock=threading.Lock())


def as_bf16(clip: LoadedClip) -> LoadedClip:
    """A bf16 copy of ``clip``, unchecked (the fp32 model is left as it was: it is the reference).
    Use ``with_precision``, which keeps it only where it agrees; this is for measuring (benchmarks)."""
    import torch

    return replace(clip, model=copy.deepcopy(clip.model).to(torch.bfloat16),
                   weights=replace(clip.weights, precision=BF16), lock=threading.Lock())


FASTER: dict[str, Callable[[LoadedClip], LoadedClip]] = {BF16: as_bf16, INT8: as_int8}  # unchecked copies


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def with_precision(clip: LoadedClip, precision: str, *, min_cosine: float = MIN_COSINE,
                   images: Sequence[Image.Image] | None = None, texts: Sequence[str] | None = None) -> LoadedClip:
    """``clip`` (fp32) running in ``precision`` where that keeps its embeddings, else in fp32 saying why.

    bf16 or int8 (asked for, or ``auto``: bf16 where the device computes it natively, else int8 on
    a CPU) embeds ``images`` and ``texts`` (default: ``calibration_images()`` and
    ``CALIBRATION_TEXTS``) in both precisions; it is kept when every cosine to fp32 is at least
    ``min_cosine``, otherwise fp32 is used with a logged warning. Either way
    ``weights.precision_note`` gives the measured minimum.
    """
    precision = check_precision(precision)
    if clip.precision != FP32:
        raise ValueError(f"with_precision starts from an fp32 model, not {clip.precision}")
    if precision == FP32:
        return clip
    native = native_bf16(clip.device)
    requested = precision
    if precision == AUTO:
        if not native and clip.device != "cpu":
            return replace(clip, weights=replace(clip.weights, precision_note=(
                f"auto: fp32, as {clip.device} has no native bf16 and int8 runs on the CPU only")))
        precision = BF16 if native else INT8
    images = calibration_images() if images is None else list(images)
    texts = list(CALIBRATION_TEXTS) if texts is None else list(texts)
    if not images or not texts:
        raise ValueError(f"{precision} calibration needs at least one image and one text")
    fast = FASTER[precision](clip)
    agreement = {"images": cosine_agreement(embed_images(clip, images), embed_images(fast, images)),
                 "texts": cosine_agreement(embed_texts(clip, texts), embed_texts(fast, texts))}
    worst = min(agreement["images"]["min"], agreement["texts"]["min"])
    asked = precision if requested == precision else f"{requested} ({precision})"
    measured = (f"{asked} requested; min cosine to fp32 {worst:.6f} over {_count(len(images), 'calibration image')} "
                f"and {_count(len(texts), 'text')}")
    if worst < min_cosine:
        note = f"{measured}, below {min_cosine}: fp32 used"
        log.warning("CLIP %s: %s", clip.weights.model, note)
        return replace(clip, weights=replace(clip.weights, precision_note=note))
    slow = "" if native or precision != BF16 else f"; {clip.device} has no native bf16, so bf16 may be slower " \
                                                   "than fp32 here"
    note = f"{measured} (>= {min_cosine}): {precision} kept{slow}"
    (log.warning if slow else log.info)("CLIP %s: %s", clip.weights.model, note)
    return replace(fast, weights=replace(fast.weights, precision_note=note))


# --- embedding ------------------------------------------------------------------------------

def embed_images(clip: LoadedClip, images: Sequence[Image.Image], batch_size: int = DEFAULT_BATCH_SIZE,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """L2-normalised float32 image embeddings, one row per image, in input order (bf16 models
    get bf16 pixels; rows are normalised in float32)."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.empty((len(images), clip.dim), dtype=np.float32)
    with clip.lock, torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            pixels = torch.stack([clip.preprocess(img) for img in batch]).to(clip.device, dtype=clip.dtype)
            feats = clip.model.encode_image(pixels)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out[start:start + len(batch)] = feats.cpu().numpy()
            if progress:
                progress(start + len(batch), len(images))
    return out


def embed_texts(clip: LoadedClip, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 text embeddings through CLIP's text tower (token ids: no cast for bf16)."""
    import torch

    out = np.empty((len(texts), clip.dim), dtype=np.float32)
    with clip.lock, torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(clip.device)
            feats = torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
            out[start:start + len(tokens)] = feats.cpu().numpy()
    return out


# --- the embeddings parquet -------------------------------------------------------------

def _vector_column(table: pa.Table, name: str, vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(table):
        raise ValueError(f"{len(table)} rows but {name} vectors of shape {vectors.shape}")
    dim = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    return table.append_column(pa.field(name, pa.list_(pa.float32(), dim)), column)


def _vectors_of(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    dim = column.type.list_size
    if not len(table):
        return np.empty((0, dim), dtype=np.float32)
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, dim), dtype=np.float32)


def write_embeddings(path: str | os.PathLike, frame: pd.DataFrame, vectors: np.ndarray,
                     info: dict, title_vectors: np.ndarray | None = None) -> Path:
    """Write rows + their vectors (a fixed-size-list column) with ``info`` in the schema metadata.

    ``title_vectors`` (the rows' titles through CLIP's text tower) go in a second vector column.
    """
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    table = _vector_column(table, EMBEDDING_COLUMN, vectors)
    if title_vectors is not None:
        table = _vector_column(table, TITLE_EMBEDDING_COLUMN, title_vectors)
    dim = table.column(EMBEDDING_COLUMN).type.list_size
    meta = dict(table.schema.metadata or {})
    meta[SCHEMA_KEY] = json.dumps({**info, "dim": dim, "normalized": True}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Rows (without the vectors), an (n, dim) float32 C-contiguous array, and the schema info."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings file {path} does not exist: materialise "
                                "thumbnail_embeddings for that partition first")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(SCHEMA_KEY)
    if raw is None or EMBEDDING_COLUMN not in table.column_names:
        raise ValueError(f"{path} is not a thumblab embeddings file (no {EMBEDDING_COLUMN!r} column "
                         "or schema metadata): re-materialise thumbnail_embeddings")
    info = json.loads(raw)
    vectors = _vectors_of(table, EMBEDDING_COLUMN)
    frame = table.drop_columns([c for c in (EMBEDDING_COLUMN, TITLE_EMBEDDING_COLUMN)
                                if c in table.column_names]).to_pandas()
    return frame, vectors, info


def read_title_embeddings(path: str | os.PathLike) -> np.ndarray | None:
    """The title vectors of an embeddings file, or None when it was written without them."""
    if TITLE_EMBEDDING_COLUMN not in pq.read_schema(path).names:
        return None
    return _vectors_of(pq.read_table(path, columns=[TITLE_EMBEDDING_COLUMN]), TITLE_EMBEDDING_COLUMN)
