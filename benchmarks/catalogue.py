"""The catalogue in-process vs on a local Ray (issue 15), printing JSON: embedding throughput, building
1,000,000 x 512 vectors into 8 shards, and the alignment checker's time for 200 samples.

    .venv/bin/python benchmarks/catalogue.py                                 # full size: several minutes
    .venv/bin/python benchmarks/catalogue.py --vectors 100000 --repeat-images 1   # a quick check of the script

1. ``embedding``: the same products (``../shared/data/images`` when present, else the sample catalogue's
   drawn images; ``--repeat-images`` times over, so that the run outlasts the start-up) through
   ``embed_products`` in this process and through ``ray_embed`` (Ray Data, one CLIP per actor). Both
   times include loading CLIP (in-process once; each actor once, in parallel) and exclude starting Ray
   (``ray_init_seconds``, once per process or cluster). The rows are compared (same ids, max vector
   difference).
2. ``shards``: ``--vectors`` synthetic unit vectors (generated in chunks into one float32 array: 2 GB at
   full size), one trained empty ``--factory`` index (trained once, not timed against either side),
   then filled into ``--shards`` shards as the engine does (``labelled_part`` + ``add_batches``) and by
   ``ray_build_shards`` (one task per shard); the shards are compared byte for byte.
3. ``checker``: the embedded products built into a catalogue index (``build_catalogue_index``) and
   ``check_alignment`` with ``--sample`` re-encoded samples; its time and how many positions it verified.

The local Ray gets every core (``--ray-cpus``) and keeps this process's priority (``ray_init``'s local
mode); CLIP runs on random weights (none can be downloaded here; the speed is the same). Targets (2
cores): Ray local >= 0.9x in-process for embedding and for shard building, 100% of positions verified.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.catalogue.checker import check_alignment
from thumblab_dagster.lib.collections.catalogue.embeddings import embed_products, product_fetcher, vectors_of
from thumblab_dagster.lib.collections.catalogue.ray_backend import ray_build_shards, ray_embed, ray_init
from thumblab_dagster.lib.collections.catalogue.sample import sample_catalogue
from thumblab_dagster.lib.collections.catalogue.shards import build_catalogue_index
from thumblab_dagster.lib.embed.clip import embed_images, load_clip
from thumblab_dagster.lib.engine.build import add_batches, train_empty
from thumblab_dagster.lib.engine.shards import labelled_part, plan_shards
from thumblab_dagster.lib.engine.sources import ArraySource

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
TARGET_RATIO = 0.9
CHUNK = 65_536


def products(repeat: int) -> tuple[pd.DataFrame, str]:
    """Product rows over the shared images (brand: their folder), else the sample catalogue."""
    paths = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if SHARED.is_dir() else []
    if paths:
        rows = [{"id": f"{r}-{p.parent.name}-{p.stem}", "image_url": str(p), "brand": p.parent.name}
                for r in range(repeat) for p in paths]
        return pd.DataFrame(rows), f"{SHARED} ({len(paths)} images x {repeat})"
    frame = sample_catalogue(300 * repeat)
    return frame, f"sample catalogue ({len(frame)} drawn images)"


def embed_in_process(args, frame: pd.DataFrame, fetch) -> tuple[pd.DataFrame, dict, object, float, float]:
    start = time.perf_counter()
    clip = load_clip(args.model, "none", "cpu")
    loaded = time.perf_counter() - start
    ours, stats = embed_products(frame, fetch, clip, batch_size=args.batch_size, log=lambda line: None)
    return ours, stats, clip, time.perf_counter() - start, loaded


def embedding_report(args, frame, source, ours, stats, local, loaded, fetch) -> dict:
    start = time.perf_counter()
    theirs, ray_stats = ray_embed(frame, model=args.model, pretrained="none", device="cpu",
                                  batch_size=args.batch_size, fetch=fetch, log=lambda line: None)
    on_ray = time.perf_counter() - start
    same_ids = ours["id"].tolist() == theirs["id"].tolist()
    diff = float(np.abs(vectors_of(ours) - vectors_of(theirs)).max()) if same_ids and len(ours) else None
    n = stats["embedded"]
    result = {
        "images": len(frame), "image_source": source, "embedded": n, "broken": stats["broken"],
        "model": f"{args.model} (random-init weights)", "batch_size": args.batch_size,
        "in_process": {"seconds": round(local, 3), "clip_load_seconds": round(loaded, 3),
                       "images_per_s": round(n / local, 2)},
        "ray_local": {"seconds": round(on_ray, 3), "images_per_s": round(ray_stats["embedded"] / on_ray, 2),
                      "actors": min(args.ray_cpus, -(-len(frame) // args.batch_size)),
                      "note": "includes starting the actors and loading CLIP in each"},
        "ratio": round(local / on_ray, 3), "target_ratio": TARGET_RATIO,
        "same_rows": same_ids and stats == ray_stats, "max_abs_vector_difference": diff,
    }
    result["met"] = result["ratio"] >= TARGET_RATIO and result["same_rows"]
    return result


def synthetic(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors, generated CHUNK rows at a time (no float64 copy of the whole)."""
    out = np.empty((n, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d), dtype=np.float32)  # some structure, so the lists are uneven as in life
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        block = centres[rng.integers(0, len(centres), rows)] + rng.standard_normal((rows, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + rows] = block
    return out


class ShardRun:
    """The shard build's inputs and its in-process result, kept for the Ray run."""

    def __init__(self, args):
        start = time.perf_counter()
        self.vectors = synthetic(args.vectors, args.dim)
        self.generated = time.perf_counter() - start
        start = time.perf_counter()
        self.empty, self.trained_on = train_empty(args.factory, "inner_product", ArraySource(self.vectors))
        self.trained = time.perf_counter() - start
        self.plan = plan_shards(len(self.vectors), -(-len(self.vectors) // args.shards))
        start = time.perf_counter()
        self.parts = [labelled_part(self.empty) for _ in self.plan]
        add_batches(self.parts, self.plan, ArraySource(self.vectors), batch_size=CHUNK)
        self.local = time.perf_counter() - start

    def report(self, args) -> dict:
        start = time.perf_counter()
        theirs = ray_build_shards(self.empty, self.vectors, self.plan)
        on_ray = time.perf_counter() - start
        equal = all(np.array_equal(faiss.serialize_index(a), faiss.serialize_index(b))
                    for a, b in zip(self.parts, theirs))
        n = len(self.vectors)
        result = {
            "vectors": n, "dim": args.dim, "shards": len(self.plan), "factory": args.factory,
            "vector_bytes": int(self.vectors.nbytes), "generate_seconds": round(self.generated, 3),
            "train_seconds": round(self.trained, 3), "train_points": self.trained_on,
            "in_process": {"seconds": round(self.local, 3), "vectors_per_s": round(n / self.local)},
            "ray_local": {"seconds": round(on_ray, 3), "vectors_per_s": round(n / on_ray),
                          "note": "includes moving each shard's vectors into Ray's object store and the shards back"},
            "ratio": round(self.local / on_ray, 3), "target_ratio": TARGET_RATIO, "shards_byte_equal": equal,
        }
        result["met"] = result["ratio"] >= TARGET_RATIO and equal
        return result


def checker(args, embedded: pd.DataFrame, clip, fetch) -> dict:
    urls = dict(zip(embedded["id"], embedded["image_url"]))

    def encode(batch: list[str]) -> np.ndarray:
        return embed_images(clip, [r.image for r in fetch(batch)])

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "catalogue"
        build_catalogue_index(target, vectors_of(embedded), embedded["id"].tolist(),
                              shard_size=max(1, -(-len(embedded) // 4)))
        start = time.perf_counter()
        report = check_alignment(target, sample=args.sample, encode=encode, urls_by_id=urls, out=lambda line: None)
        seconds = time.perf_counter() - start
    metrics = report.metrics
    return {"sample": args.sample, "products": len(embedded), "seconds": round(seconds, 3),
            "passed": report.passed, "positions_verified_share": metrics.get("positions_verified_share"),
            "positions_verified": metrics.get("positions_verified"), "positions_total": metrics.get("positions_total"),
            "sampled_ok": metrics.get("sampled_ok"), "sampled_total": metrics.get("sampled_total"),
            "min_cos": metrics.get("min_cos"), "target_positions_verified_share": 1.0,
            "met": report.passed and metrics.get("positions_verified_share") == 1.0}


def machine() -> dict:
    import ray
    import torch

    return {"cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "ray": ray.__version__, "faiss": faiss.__version__, "torch": torch.__version__,
            "torch_threads_in_process": torch.get_num_threads(), "faiss_threads_in_process": faiss.omp_get_max_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--factory", default="IVF1024,PQ64", help="fits memory: 64 bytes a vector (default)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32, help="products a batch (a Ray Data row)")
    parser.add_argument("--repeat-images", type=int, default=4, help="embed the image set this many times over")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--skip", nargs="*", default=[], choices=("embedding", "shards", "checker"),
                        help="parts to leave out (the in-process embedding always runs: the checker reads it)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    fetch = product_fetcher()
    # In-process first, before Ray starts: its idle processes then cost the in-process side nothing.
    frame, source = products(args.repeat_images)
    ours, stats, clip, local, loaded = embed_in_process(args, frame, fetch)
    shard_run = None if "shards" in args.skip else ShardRun(args)
    start = time.perf_counter()
    ray_init("local", num_cpus=args.ray_cpus, object_store_memory=1536 * 2**20, log_to_driver=False)
    report = {"benchmark": "catalogue", "ray_init_seconds": round(time.perf_counter() - start, 3)}
    if "embedding" not in args.skip:
        report["embedding"] = embedding_report(args, frame, source, ours, stats, local, loaded, fetch)
    if shard_run is not None:
        report["shards"] = shard_run.report(args)
        del shard_run
    if "checker" not in args.skip:
        report["checker"] = checker(args, ours, clip, fetch)
    report["machine"] = {**machine(), "load_average_before": [round(v, 2) for v in load_before],
                         "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    report["met"] = all(part["met"] for key, part in report.items() if isinstance(part, dict) and "met" in part)
    print(json.dumps(report, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
