"""Images per second of thumbnail_embeddings' embedding path vs a bare open_clip loop.

Prints JSON. Uses ../shared/data/images when present, otherwise rendered sample thumbnails.
Both sides get the same decoded images, model, batch size and thread count; runs alternate
so that machine noise hits both alike, and the median of the repeats is reported.

    .venv/bin/python benchmarks/embed_throughput.py [--repeats 3] [--batch-size 32] [--limit N]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.clip import embed_images, load_clip
from thumblab_dagster.lib.embed.images import fetch_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"


def image_paths(limit):
    if SHARED.is_dir():
        return sorted(str(p) for p in SHARED.rglob("*.jpg"))[:limit], str(SHARED)
    return None, "rendered sample thumbnails"


def bare_loop(model, preprocess, images, batch_size):
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.stack([preprocess(im) for im in images[i:i + batch_size]])
            f = model.encode_image(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).numpy())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32")
    args = ap.parse_args(argv)

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
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
