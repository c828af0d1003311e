"""Query-side latency: the reference library beside a bare faiss search on the same index (JSON).

    .venv/bin/python benchmarks/query_latency.py --sizes 13500 1000000

For each size, clustered synthetic vectors (d=512, unit norm; the same generator as
``index_engine.py``) are built into an index by the engine at the memory budget the pipeline
uses by default (with the percentile reference and metadata, as a niche is), published, and
loaded through ``ReferenceLibrary``. Held-out queries from the same clusters are then run one at a time,
interleaved: bare ``index.search(q, 10)`` with the manifest's tuned parameters set once,
``similarity_percentile`` and ``similar(k=10)``. Reported: p50/p99 in ms, the first-load time
(verify checksums + read index + metadata + reference), and whether p50 <= 1.2 x bare + 0.2 ms.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from index_engine import clustered, write_clustered  # noqa: E402  (the same data as the engine benchmark)

D, K = 512, 10


def build(workdir: Path, n: int, memory_mb: int) -> tuple[Path, object, float]:
    import pandas as pd

    from thumblab_dagster.lib.engine.build import IndexSpec, ReferenceSpec, build_index_dir
    from thumblab_dagster.lib.engine.percentiles import row_weights
    from thumblab_dagster.lib.engine.publish import publish

    vectors = workdir / "emb.npy"
    write_clustered(vectors, n, D)
    ids = [f"v{i:07d}" for i in range(n)]
    rng = np.random.default_rng(5)
    metadata = pd.DataFrame({"video_id": ids, "title": [f"video {i}" for i in range(n)],
                             "thumbnail_url": [f"https://i.ytimg.com/vi/{i}/hqdefault.jpg" for i in ids],
                             "views_per_hour": rng.lognormal(5, 2, n)})
    start = time.perf_counter()
    spec = IndexSpec(memory_budget_bytes=memory_mb * 2**20, metadata=metadata, id_column="video_id",
                     reference=ReferenceSpec(k=K, weights=row_weights(metadata, "views_per_hour"),
                                             weighting="views_per_hour"),
                     extra={"snapshot": "2026-11-21"})
    manifest = build_index_dir(workdir / "index", vectors, ids, spec)
    build_s = time.perf_counter() - start
    publish(workdir / "index", workdir / "pub", "bench", "2026-11-21")
    return workdir / "pub", manifest, build_s


def percentiles(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 4), "p99_ms": round(float(np.percentile(values, 99)), 4)}


def measure(pub: Path, manifest: dict, n_queries: int) -> dict:
    import faiss

    from thumblab_dagster.lib.collections.thumbnails.scoring import thumbnail_library
    from thumblab_dagster.lib.engine.search import apply_params

    library = thumbnail_library(pub)  # finds the published bench index under pub
    start = time.perf_counter()
    entry = library.entry("bench")
    first_load_ms = (time.perf_counter() - start) * 1000.0
    bare = entry.index.index  # the very faiss object the library searches
    apply_params(bare, manifest.get("search_params") or {})
    queries = next(clustered(n_queries, D, seed=2))
    for q in queries[:20]:  # warm-up: page in the index, metadata and re-rank vectors
        bare.search(q[None, :], K)
        library.similarity_percentile(q, "bench")
        library.similar(q, "bench", K)
    ops = {"bare_faiss_search": lambda q: bare.search(q[None, :], K),
           "similarity_percentile": lambda q: sources.add(library.similarity_percentile(q, "bench").source),
           "similar_k10": lambda q: library.similar(q, "bench", K)}
    timings = {name: [] for name in ops}
    sources = set()
    names = list(ops)
    for i, q in enumerate(queries):
        # Rotate which goes first: the first search of a query warms the caches for the others.
        for name in names[i % 3:] + names[:i % 3]:
            start = time.perf_counter()
            ops[name](q)
            timings[name].append((time.perf_counter() - start) * 1e3)
    out = {name: percentiles(values) for name, values in timings.items()}
    bare_p50 = out["bare_faiss_search"]["p50_ms"]
    target = 1.2 * bare_p50 + 0.2
    for name in ("similarity_percentile", "similar_k10"):
        out[name]["target_p50_ms"] = round(target, 4)
        out[name]["meets_target"] = out[name]["p50_ms"] <= target
    return {"first_load_ms": round(first_load_ms, 1), "queries": n_queries, "answered_by": sorted(sources),
            "faiss_threads": faiss.omp_get_max_threads(), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[13_500, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--memory-mb", type=int, default=2048, help="the pipeline's default THUMBLAB_INDEX_MEMORY_MB")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="measure indices already built under --workdir")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="query-latency-") as tmp:
        root = args.workdir or Path(tmp)
        for n in args.sizes:
            workdir = root / str(n)
            workdir.mkdir(parents=True, exist_ok=True)
            if args.reuse and (workdir / "pub" / "bench_manifest.json").exists():
                from thumblab_dagster.lib.engine.index_dir import read_manifest

                pub, build_s = workdir / "pub", None
                manifest = read_manifest(pub / "bench_manifest.json")
            else:
                pub, manifest, build_s = build(workdir, n, args.memory_mb)
            results.append({"vectors": n, "dim": D, "factory": manifest["factory"],
                            "search_params": manifest["search_params"], "build_s": build_s and round(build_s, 1),
                            **measure(pub, manifest, args.queries)})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "query_latency", "machine": {"cpus": os.cpu_count(),
                                                                  "python": platform.python_version()},
                      "memory_budget_mb": args.memory_mb, "results": results}, indent=2))


if __name__ == "__main__":
    main()
