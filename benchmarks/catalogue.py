"""The catalogue in-process vs on a local Ray (issue 15), printing JSON: embedding throughput, building
1,000,000 x 512 vectors into 8 shards, and the alignment checker's time for 200 samples.

    .venv/bin/python benchmarks/catalogue.py            # full size: about 15 minutes of both cores
    .venv/bin/python benchmarks/catalogue.py --vectors 100000 --repeat-images 1 --repeats 1 --embed-repeats 1   # quick

Ray starts first (``ray_init_seconds``: once per process or cluster, left out of every time below) with
every core (``--ray-cpus``); in-process and Ray runs then alternate, so that the machine's other load
hits both alike, and the medians are compared.

1. ``embedding``: the same products (``../shared/data/images`` when present, else the sample catalogue's
   drawn images; ``--repeat-images`` times over: 8, 1,224 images, a small catalogue) through
   ``embed_products`` in this process and through ``ray_embed`` (Ray Data, one CLIP per actor). Both
   include loading CLIP (in-process once, afresh each run; each actor once, in parallel): the time to the
   first batch shows that start-up, and the rate after it what a larger catalogue tends to. Ray's start-up
   is fixed (its actors are new processes that import torch and open_clip, then load CLIP), so the ratio
   grows with the catalogue: ``ratio_reaches_target_from_images`` extrapolates from the two start-ups and
   rates how many images it takes to reach the target. The rows are compared (same ids and stats, max
   vector difference). CLIP runs on random weights (none can be downloaded here; the speed is the same).
2. ``shards``: ``--vectors`` synthetic unit vectors (generated in chunks into one float32 array: 2 GB at
   full size), one trained empty ``--factory`` index (trained once, outside both timings), then filled into
   ``--shards`` shards as the engine does (``labelled_part`` + ``add_batches``, faiss on every core) and by
   ``ray_build_shards`` (one task per shard, one core each). The shards are compared: byte for byte, and
   where a shard differs, which vectors went to another inverted list and whether each was exactly tied
   between the two (BLAS sums in another order with another thread count; in-process builds on different
   core counts differ the same way).
3. ``checker``: the embedded products built into a catalogue index (``build_catalogue_index``) and
   ``check_alignment`` with ``--sample`` re-encoded samples: its time and how many positions it verified.

Targets (2 cores): Ray local >= 0.9x in-process for embedding and for shard building, equal results,
100% of positions verified.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
TIE = 1e-5  # two lists' scores for a vector closer than this are a tie (float32 sums in another order)


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


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


class Clock:
    """When each ``Batch N`` line came (seconds from the start): the first one shows the start-up."""

    def __init__(self):
        self.start, self.batches = time.perf_counter(), []

    def __call__(self, line: str) -> None:
        if line.startswith("Batch "):
            self.batches.append(time.perf_counter() - self.start)


def embed_in_process(args, frame: pd.DataFrame, fetch, clock: Clock):
    """``embed_products`` with CLIP loaded afresh (each Ray actor loads its own too)."""
    load_clip.cache_clear()
    clip = load_clip(args.model, "none", "cpu")
    return clip, *embed_products(frame, fetch, clip, batch_size=args.batch_size, log=clock)


def figures(runs: list[float], clocks: list[Clock], n: int, batch_size: int) -> dict:
    """Median seconds and images/s; the first batch's time (start-up: loading CLIP, starting actors) and
    the rate after it (what a larger catalogue tends to)."""
    seconds, first = statistics.median(runs), statistics.median(c.batches[0] for c in clocks)
    after = statistics.median((n - batch_size) / (c.batches[-1] - c.batches[0]) for c in clocks) \
        if n > batch_size else None
    return {"seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2), "runs": [round(x, 2) for x in runs],
            "first_batch_seconds": round(first, 2), "images_per_s_after_first_batch": after and round(after, 2)}


def embedding(args, frame: pd.DataFrame, source: str, fetch) -> tuple[dict, pd.DataFrame, object]:
    local_s, ray_s, local_clocks, ray_clocks = [], [], [], []
    for _ in range(args.embed_repeats):  # alternating, so that the machine's other load hits both alike
        local_clocks.append(Clock())
        seconds, (clip, ours, stats) = timed(lambda: embed_in_process(args, frame, fetch, local_clocks[-1]))
        local_s.append(seconds)
        ray_clocks.append(Clock())
        seconds, (theirs, ray_stats) = timed(lambda: ray_embed(
            frame, model=args.model, pretrained="none", device="cpu", batch_size=args.batch_size, fetch=fetch,
            log=ray_clocks[-1], **({"cpus_per_actor": args.cpus_per_actor} if args.cpus_per_actor else {})))
        ray_s.append(seconds)
    same_ids = ours["id"].tolist() == theirs["id"].tolist()
    diff = float(np.abs(vectors_of(ours) - vectors_of(theirs)).max()) if same_ids and len(ours) else None
    n = stats["embedded"]
    local = figures(local_s, local_clocks, n, args.batch_size)
    on_ray = figures(ray_s, ray_clocks, n, args.batch_size)
    result = {
        "images": len(frame), "image_source": source, "embedded": n, "broken": stats["broken"],
        "model": f"{args.model} (random-init weights)", "batch_size": args.batch_size, "repeats": args.embed_repeats,
        "in_process": {**local, "note": "includes loading CLIP (before the first batch)"},
        "ray_local": {**on_ray, "cpus_per_actor": args.cpus_per_actor or "default",
                      "note": "includes starting the actors and loading CLIP in each (before the first batch)"},
        "ratio": round(local["seconds"] / on_ray["seconds"], 3), "target_ratio": TARGET_RATIO,
        "ratio_after_first_batch": on_ray["images_per_s_after_first_batch"] and local["images_per_s_after_first_batch"]
        and round(on_ray["images_per_s_after_first_batch"] / local["images_per_s_after_first_batch"], 3),
        "same_rows": same_ids and stats == ray_stats, "max_abs_vector_difference": diff,
    }
    result["ray_start_up_extra_seconds"] = round(on_ray["first_batch_seconds"] - local["first_batch_seconds"], 2)
    result["ratio_reaches_target_from_images"] = break_even(local, on_ray, args.batch_size)
    result["met"] = result["ratio"] >= TARGET_RATIO and result["same_rows"]
    return result, ours, clip


def break_even(local: dict, on_ray: dict, batch_size: int) -> int | None:
    """From how many images Ray's total time is within TARGET_RATIO of in-process, extrapolating each way's
    start-up (time to the first batch) and rate after it; None where Ray's rate never makes up its start."""
    rate_l, rate_r = local["images_per_s_after_first_batch"], on_ray["images_per_s_after_first_batch"]
    if not rate_l or not rate_r:
        return None
    per_image = 1 / rate_l - TARGET_RATIO / rate_r  # seconds of margin each image after the first batch adds
    gap = TARGET_RATIO * on_ray["first_batch_seconds"] - local["first_batch_seconds"]
    if gap <= 0:
        return batch_size
    return None if per_image <= 0 else int(np.ceil(batch_size + gap / per_image))


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


def in_process_shards(empty: faiss.Index, vectors: np.ndarray, plan: list[dict]) -> list[faiss.Index]:
    """What build_index_dir does with a shard plan."""
    parts = [labelled_part(empty) for _ in plan]
    add_batches(parts, plan, ArraySource(vectors), batch_size=CHUNK)
    return parts


def placements(part: faiss.Index) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's inverted list and code (rows in add order), or None for an index without lists."""
    try:
        ivf = faiss.extract_index_ivf(part.index)
    except RuntimeError:
        return None
    inv, n = ivf.invlists, part.ntotal
    lists, codes = np.empty(n, np.int64), np.empty((n, inv.code_size), np.uint8)
    for number in range(ivf.nlist):
        size = inv.list_size(number)
        if size:
            rows = faiss.rev_swig_ptr(inv.get_ids(number), size).copy()
            lists[rows] = number
            codes[rows] = faiss.rev_swig_ptr(inv.get_codes(number), size * inv.code_size).reshape(size, -1)
    return lists, codes


def list_score(centroids: np.ndarray, rows: np.ndarray, inner_product: bool) -> np.ndarray:
    """How near each row is to its list's centroid, as the coarse quantizer scores it."""
    if inner_product:
        return np.einsum("ij,ij->i", centroids, rows)
    return -np.sum((centroids - rows) ** 2, axis=1)


def compare_shards(ours, theirs, empty, vectors, plan) -> dict:
    """Byte equality per shard; where a shard differs, which rows went to another list or code, and
    whether each such row was exactly tied between the two lists (the thread count decides a tie)."""
    ids_equal = all(np.array_equal(faiss.vector_to_array(a.id_map), faiss.vector_to_array(b.id_map))
                    for a, b in zip(ours, theirs))
    byte_equal, moved, recoded, gaps = 0, 0, 0, []
    centroids = None
    for shard, a, b in zip(plan, ours, theirs):
        if np.array_equal(faiss.serialize_index(a), faiss.serialize_index(b)):
            byte_equal += 1
            continue
        pa, pb = placements(a), placements(b)
        if pa is None:
            recoded += shard["count"]  # not an IVF index: no way to tell a tie; counted as differing
            continue
        other = np.nonzero(pa[0] != pb[0])[0]
        moved += len(other)
        recoded += int(np.count_nonzero(np.any(pa[1] != pb[1], axis=1) & (pa[0] == pb[0])))
        if len(other):
            ivf = faiss.extract_index_ivf(empty)
            centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist) if centroids is None else centroids
            rows = vectors[shard["offset"] + other]
            ip = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
            gaps.extend(np.abs(list_score(centroids[pa[0][other]], rows, ip)
                               - list_score(centroids[pb[0][other]], rows, ip)).tolist())
    return {"shards_byte_equal": f"{byte_equal}/{len(plan)}", "ids_equal": ids_equal,
            "vectors_in_another_list": moved, "vectors_with_another_code": recoded,
            "max_tie_gap": max(gaps) if gaps else 0.0,
            "equal": ids_equal and recoded == 0 and all(gap <= TIE for gap in gaps)}


def shards(args) -> dict:
    generated, vectors = timed(lambda: synthetic(args.vectors, args.dim))
    trained, (empty, trained_on) = timed(lambda: train_empty(args.factory, "inner_product", ArraySource(vectors)))
    plan = plan_shards(len(vectors), -(-len(vectors) // args.shards))
    local_s, ray_s = [], []
    for _ in range(args.repeats):  # alternating; the first Ray run also starts its task workers
        seconds, ours = timed(lambda: in_process_shards(empty, vectors, plan))
        local_s.append(seconds)
        seconds, theirs = timed(lambda: ray_build_shards(empty, vectors, plan))
        ray_s.append(seconds)
    n, local, on_ray = len(vectors), statistics.median(local_s), statistics.median(ray_s)
    result = {
        "vectors": n, "dim": args.dim, "shards": len(plan), "factory": args.factory,
        "vector_bytes": int(vectors.nbytes), "generate_seconds": round(generated, 3),
        "train_seconds": round(trained, 3), "train_points": trained_on, "repeats": args.repeats,
        "in_process": {"seconds": round(local, 3), "vectors_per_s": round(n / local),
                       "runs": [round(x, 2) for x in local_s]},
        "ray_local": {"seconds": round(on_ray, 3), "vectors_per_s": round(n / on_ray),
                      "runs": [round(x, 2) for x in ray_s],
                      "note": "one task per shard; includes moving each shard's vectors into Ray's object store "
                              "and the shards back"},
        "ratio": round(local / on_ray, 3), "target_ratio": TARGET_RATIO,
        "comparison": compare_shards(ours, theirs, empty, vectors, plan),
    }
    result["met"] = result["ratio"] >= TARGET_RATIO and result["comparison"]["equal"]
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
    parser.add_argument("--repeat-images", type=int, default=8,
                        help="embed the image set this many times over (8: 1,224 of the shared images)")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--cpus-per-actor", type=float, default=None, help="ray_embed's (default: its own)")
    parser.add_argument("--repeats", type=int, default=3, help="shard builds each way, alternating (median)")
    parser.add_argument("--embed-repeats", type=int, default=2, help="embedding runs each way, alternating (median)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("shards", "checker"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    fetch = product_fetcher()
    start = time.perf_counter()
    ray_init("local", num_cpus=args.ray_cpus, object_store_memory=1536 * 2**20, log_to_driver=False)
    report = {"benchmark": "catalogue", "ray_init_seconds": round(time.perf_counter() - start, 3)}
    frame, source = products(args.repeat_images)
    report["embedding"], embedded, clip = embedding(args, frame, source, fetch)
    if "shards" not in args.skip:
        report["shards"] = shards(args)
    if "checker" not in args.skip:
        report["checker"] = checker(args, embedded, clip, fetch)
    report["machine"] = {**machine(), "load_average_before": [round(v, 2) for v in load_before],
                         "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    report["met"] = all(part["met"] for key, part in report.items() if isinstance(part, dict) and "met" in part)
    print(json.dumps(report, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
