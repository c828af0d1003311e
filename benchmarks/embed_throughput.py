"""Images per second of thumbnail_embeddings' embedding path vs a bare open_clip loop, and fp32 vs bf16 / int8.

Prints JSON. Uses ../shared/data/images when present, otherwise rendered sample thumbnails.
Both sides get the same decoded images, model, batch size and thread count; runs alternate
so that machine noise hits both alike, and the median of the repeats is reported.

The precision part runs the same images (and ``--texts`` titles) through a bf16 copy and an int8
copy (dynamic quantisation of the image tower) of the model and reports each beside fp32:
images/s, texts/s, and the cosine of every embedding to its fp32 one (min/mean;
``THUMBLAB_CLIP_PRECISION`` keeps a faster precision only when the minimum is >= 0.999), plus
what ``auto`` picks on this machine. bf16 is much slower where the CPU has no native bf16, so
the precision runs default to ``--precision-repeats 1`` (that pass also gives the cosines).

    .venv/bin/python benchmarks/embed_throughput.py [--repeats 3] [--batch-size 32] [--limit N] [--precisions bf16 int8]
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
    BF16,
    FASTER,
    INT8,
    MIN_COSINE,
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


def precision_comparison(clip, images, texts, batch_size, repeats, fp32_images_per_s,
                         precisions=(BF16, INT8)) -> dict:
    """The faster precisions beside fp32: speed (images/s, texts/s) and each embedding's cosine to its fp32 one."""
    repeats = max(1, repeats)
    reference_images = embed_images(clip, images, batch_size)
    fp32_texts, reference_texts = [], None
    for _ in range(repeats):
        speed, reference_texts = timed(lambda: embed_texts(clip, texts), len(texts))
        fp32_texts.append(speed)
    fp32 = {"images_per_s": round(fp32_images_per_s, 2), "texts_per_s": round(statistics.median(fp32_texts), 2)}
    out: dict = {"fp32": fp32, "min_cosine_required": MIN_COSINE, "bf16_native_here": native_bf16(clip.device)}
    for precision in precisions:
        fast = FASTER[precision](clip)
        embed_images(fast, images[:batch_size], batch_size)  # warm-up
        embed_texts(fast, texts[:8])
        image_speeds, text_speeds, got_images, got_texts = [], [], None, None
        for _ in range(repeats):
            speed, got_texts = timed(lambda fast=fast: embed_texts(fast, texts), len(texts))
            text_speeds.append(speed)
            speed, got_images = timed(lambda fast=fast: embed_images(fast, images, batch_size), len(images))
            image_speeds.append(speed)
        cosines = {"images": cosine_agreement(reference_images, got_images),
                   "texts": cosine_agreement(reference_texts, got_texts)}
        cosines = {tower: {key: round(value, 6) if isinstance(value, float) else value for key, value in c.items()}
                   for tower, c in cosines.items()}
        images_per_s = round(statistics.median(image_speeds), 2)
        out[precision] = {"images_per_s": images_per_s, "texts_per_s": round(statistics.median(text_speeds), 2),
                          "images_speedup": round(images_per_s / fp32["images_per_s"], 3),
                          "cosine_to_fp32": cosines,
                          "agrees": min(cosines["images"]["min"], cosines["texts"]["min"]) >= MIN_COSINE}
    auto = with_precision(clip, AUTO)  # bf16 where native, else int8 on a CPU, each only if it agrees
    out.update({"auto_picks": auto.precision, "auto_note": auto.weights.precision_note, "repeats": repeats})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--texts", type=int, default=256, help="titles through the text tower, in each precision")
    ap.add_argument("--precision-repeats", type=int, default=1)
    ap.add_argument("--precisions", nargs="*", default=[BF16, INT8], help="compared with fp32 (none: skip)")
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
    if args.precisions:
        result["precision"] = precision_comparison(clip, images, titles(args.texts), args.batch_size,
                                                   args.precision_repeats, statistics.median(ours), args.precisions)
    result["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
