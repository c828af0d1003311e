"""Images per second of thumbnail_embeddings' embedding path vs a bare open_clip loop, and fp32 vs bf16.

Prints JSON. Uses ../shared/data/images when present, otherwise rendered sample thumbnails.
Both sides get the same decoded images, model, batch size and thread count; runs alternate
so that machine noise hits both alike, and the median of the repeats is reported.

The precision part runs the same images (and ``--texts`` titles) through a bf16 copy of the model
and reports it beside fp32: images/s, texts/s, and the cosine of every bf16 embedding to its fp32
one (min/mean; ``THUMBLAB_CLIP_PRECISION=bf16`` keeps bf16 only when the minimum is >= 0.999), plus
what ``auto`` picks on this machine. bf16 is much slower where the CPU has no native bf16, so its
runs default to ``--bf16-repeats 1`` (that pass also gives the cosines).

    .venv/bin/python benchmarks/embed_throughput.py [--repeats 3] [--batch-size 32] [--limit N]
        [--texts 256] [--bf16-repeats 1] [--no-bf16]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.clip import (
    AUTO,
    MIN_COSINE,
    as_bf16,
    cosine_agreement,
    embed_images,
    embed_texts,
    load_clip,
    native_bf16,
    with_precision,
)
from thumblab_dagster.lib.embed.images import fetch_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
WORDS = ("I built", "the best", "why", "10 minute", "budget", "gaming PC", "workout", "keyboard", "review",
         "in 2026", "from scratch", "tips", "vs", "explained", "(no equipment!)", "#shorts")


def image_paths(limit):
    if SHARED.is_dir():
        return sorted(str(p) for p in SHARED.rglob("*.jpg"))[:limit], str(SHARED)
    return None, "rendered sample thumbnails"


def titles(n: int) -> list[str]:
    """``n`` title-like strings of 3 to 8 words (seeded)."""
    rng = np.random.default_rng(7)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) + f" {i}" for i in range(n)]


def bare_loop(model, preprocess, images, batch_size):
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.stack([preprocess(im) for im in images[i:i + batch_size]])
            f = model.encode_image(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).numpy())
    return out


def timed(fn, count: int) -> tuple[float, object]:
    """(items per second, fn's result)."""
    start = time.perf_counter()
    result = fn()
    return count / (time.perf_counter() - start), result


def precision_comparison(clip, images, texts, batch_size, repeats, fp32_images_per_s) -> dict:
    """bf16 beside fp32: speed (images/s, texts/s) and each embedding's cosine to its fp32 one."""
    repeats = max(1, repeats)
    fast = as_bf16(clip)
    embed_images(fast, images[:batch_size], batch_size)  # warm-up
    embed_texts(fast, texts[:8])
    fp32_texts, bf16_texts, bf16_images = [], [], []
    reference_images = embed_images(clip, images, batch_size)
    got_images = got_texts = reference_texts = None
    for _ in range(repeats):
        speed, reference_texts = timed(lambda: embed_texts(clip, texts), len(texts))
        fp32_texts.append(speed)
        speed, got_texts = timed(lambda: embed_texts(fast, texts), len(texts))
        bf16_texts.append(speed)
        speed, got_images = timed(lambda: embed_images(fast, images, batch_size), len(images))
        bf16_images.append(speed)
    cosines = {"images": cosine_agreement(reference_images, got_images),
               "texts": cosine_agreement(reference_texts, got_texts)}
    cosines = {tower: {key: round(value, 6) if isinstance(value, float) else value for key, value in c.items()}
               for tower, c in cosines.items()}
    bf16 = {"images_per_s": round(statistics.median(bf16_images), 2),
            "texts_per_s": round(statistics.median(bf16_texts), 2)}
    fp32 = {"images_per_s": round(fp32_images_per_s, 2), "texts_per_s": round(statistics.median(fp32_texts), 2)}
    auto = with_precision(clip, AUTO)  # calibrates only where bf16 is native
    worst = min(cosines["images"]["min"], cosines["texts"]["min"])
    return {
        "fp32": fp32,
        "bf16": bf16,
        "bf16_images_speedup": round(bf16["images_per_s"] / fp32["images_per_s"], 3),
        "faster_for_images": "bf16" if bf16["images_per_s"] > fp32["images_per_s"] else "fp32",
        "bf16_cosine_to_fp32": cosines,
        "min_cosine_required": MIN_COSINE,
        "bf16_agrees": worst >= MIN_COSINE,
        "bf16_native_here": native_bf16(clip.device),
        "auto_picks": auto.precision,
        "auto_note": auto.weights.precision_note,
        "bf16_repeats": repeats,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--texts", type=int, default=256, help="titles through the text tower, fp32 and bf16")
    ap.add_argument("--bf16-repeats", type=int, default=1)
    ap.add_argument("--no-bf16", action="store_true", help="skip the precision comparison")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]

    paths, source = image_paths(args.limit)
    start = time.perf_counter()
    if paths:
        fetched = fetch_images(paths, max_workers=8)
        images = [r.image for r in fetched if r.ok]
    else:
        images = [render_thumbnail(n, f"bench{i}") for i in range(30)
                  for n in ("tech", "gaming", "education", "entertainment", "people")][:args.limit]
    load_seconds = time.perf_counter() - start

    clip = load_clip(args.model, "none", "cpu")
    embed_images(clip, images[: args.batch_size], args.batch_size)  # warm-up
    bare_loop(clip.model, clip.preprocess, images[: args.batch_size], args.batch_size)

    ours, bare = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        embed_images(clip, images, args.batch_size)
        ours.append(len(images) / (time.perf_counter() - t))
        t = time.perf_counter()
        bare_loop(clip.model, clip.preprocess, images, args.batch_size)
        bare.append(len(images) / (time.perf_counter() - t))

    result = {
        "benchmark": "embed_throughput",
        "images": len(images),
        "image_source": source,
        "fetch_decode_images_per_s": round(len(images) / load_seconds, 1),
        "model": args.model,
        "weights": "random-init (no weights can be downloaded here; speed is the same)",
        "batch_size": args.batch_size,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "thumblab_images_per_s": round(statistics.median(ours), 2),
        "bare_open_clip_images_per_s": round(statistics.median(bare), 2),
        "ratio": round(statistics.median(ours) / statistics.median(bare), 3),
        "target_ratio": 0.9,
    }
    if not args.no_bf16:
        result["precision"] = precision_comparison(clip, images, titles(args.texts), args.batch_size,
                                                   args.bf16_repeats, statistics.median(ours))
    result["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
