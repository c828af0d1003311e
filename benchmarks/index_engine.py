"""Index engine vs autofaiss vs flat, on clustered synthetic data, printing JSON.

    .venv/bin/python benchmarks/index_engine.py --sizes 100000 1000000 \
        --autofaiss-python /path/to/autofaiss-venv/bin/python

For each size: vectors (d=512, unit norm, 1,000 overlapping clusters) are written to an .npy
file; 1,000 held-out queries from the same clusters and their exact top-10 are computed once.
Each system then runs in its own process (peak RSS is that process's): thumblab's engine with
``choose_index`` at the memory budget; autofaiss with the same data and budget (from its own
virtual environment: it needs numpy<2); bare faiss IndexFlatIP; and thumblab with a Flat
index, to show the engine's overhead on flat indices. Build time includes training, adding
and (thumblab) tuning; QPS is batched search of all queries with each system's chosen
setting. autofaiss venv: python -m venv V && V/bin/pip install autofaiss "numpy<2" "pandas<3".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

K = 10


def clustered(n: int, d: int, seed: int, clusters: int = 1000, spread: float = 0.8, chunk: int = 100_000):
    import numpy as np

    centres = np.random.default_rng(2024).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def write_clustered(path: Path, n: int, d: int) -> None:
    """``n`` clustered unit vectors into an .npy file, a block at a time (1M x 512 is 2 GB)."""
    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    start = 0
    for block in clustered(n, d, seed=1):
        out[start:start + len(block)] = block
        start += len(block)
    out.flush()


def prepare(workdir: Path, n: int, d: int, n_queries: int) -> dict:
    import numpy as np

    from thumblab_dagster.lib.engine.sources import NpyFileSource
    from thumblab_dagster.lib.engine.tune import exact_neighbours

    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    data = data_dir / "emb.npy"
    write_clustered(data, n, d)
    queries = next(clustered(n_queries, d, seed=2))
    np.save(workdir / "queries.npy", queries)
    gt = exact_neighbours(NpyFileSource(data), queries, K, "inner_product")
    np.save(workdir / "gt.npy", gt)
    return {"data": str(data), "data_dir": str(data_dir), "queries": str(workdir / "queries.npy"),
            "gt": str(workdir / "gt.npy")}


def _recall(found, gt) -> float:
    return sum(len(set(f[:K]) & set(g[:K])) for f, g in zip(found.tolist(), gt.tolist())) / (K * len(gt))


def _qps(search, queries) -> float:
    search(queries[:16])  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        search(queries)
        times.append(time.perf_counter() - start)
        if sum(times) > 20:
            break
    return len(queries) / sorted(times)[len(times) // 2]


def _dir_bytes(path: Path, skip=()) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file() and p.name not in skip)


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM is per address space: the parent's pages before exec don't count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def worker(system: str, files: dict, budget_mb: int, out_dir: Path) -> dict:
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(os.cpu_count())
    queries, gt = np.load(files["queries"]), np.load(files["gt"])
    if system in ("thumblab", "thumblab_flat"):
        from thumblab_dagster.lib.engine import index_dir
        from thumblab_dagster.lib.engine.build import POSITIONS, IndexSpec, build_index_dir
        from thumblab_dagster.lib.engine.sources import NpyFileSource

        source = NpyFileSource(files["data"])
        start = time.perf_counter()
        manifest = build_index_dir(out_dir / system, source, POSITIONS,  # row i is id i: no ids file
                                   IndexSpec(memory_budget_bytes=budget_mb * 2**20,
                                             factory="Flat" if system == "thumblab_flat" else None))
        build_s = time.perf_counter() - start
        loaded = index_dir.load_index_dir(out_dir / system)
        _, found = loaded.search(queries, K)
        return {"factory": manifest["factory"], "search_params": manifest["search_params"],
                "build_s": round(build_s, 2), "build_s_by_stage": manifest["build_seconds_by_stage"],
                "index_bytes": _dir_bytes(out_dir / system, skip={"vectors.npy"}),
                "stored_vectors_bytes_on_disk": (out_dir / system / "vectors.npy").stat().st_size
                if (out_dir / system / "vectors.npy").exists() else 0,
                "recall_at_10": round(_recall(found, gt), 4),
                "tuned_recall_held_out": manifest.tuning.recall_at_k_held_out if manifest.tuning else None,
                "tuned_recall_lower_bound_95": manifest.tuning.recall_lower_bound_95 if manifest.tuning else None,
                "qps": round(_qps(lambda q: loaded.search(q, K), queries), 1)}
    if system == "faiss_flat":
        start = time.perf_counter()
        index = faiss.IndexFlatIP(queries.shape[1])
        data = np.load(files["data"], mmap_mode="r")
        for s in range(0, len(data), 65_536):
            index.add(np.ascontiguousarray(data[s:s + 65_536]))
        faiss.write_index(index, str(out_dir / "faiss_flat.index"))  # a build's product is a file, as for the others
        build_s = time.perf_counter() - start
        _, found = index.search(queries, K)
        return {"factory": "Flat", "build_s": round(build_s, 2), "index_bytes": 4 * index.ntotal * index.d,
                "recall_at_10": round(_recall(found, gt), 4), "qps": round(_qps(lambda q: index.search(q, K), queries), 1)}
    if system == "autofaiss":
        from autofaiss import build_index

        start = time.perf_counter()
        index, infos = build_index(embeddings=files["data_dir"], index_path=str(out_dir / "autofaiss.index"),
                                   index_infos_path=str(out_dir / "autofaiss_infos.json"),
                                   max_index_memory_usage=f"{budget_mb}M", current_memory_available="16G",
                                   metric_type="ip", nb_cores=os.cpu_count(), verbose=30)
        build_s = time.perf_counter() - start
        _, found = index.search(queries, K)
        return {"factory": infos.get("index_key"), "search_params": infos.get("index_param"),
                "build_s": round(build_s, 2), "index_bytes": (out_dir / "autofaiss.index").stat().st_size,
                "recall_at_10": round(_recall(found, gt), 4), "qps": round(_qps(lambda q: index.search(q, K), queries), 1)}
    raise ValueError(f"unknown system {system!r}")


def run_worker(python: str, system: str, files: dict, budget_mb: int, out_dir: Path) -> dict:
    """One system in its own process, so each peak RSS is its own."""
    out = out_dir / f"{system}.json"
    cmd = [python, __file__, "--worker", system, "--files", json.dumps(files), "--budget-mb", str(budget_mb),
           "--out-dir", str(out_dir)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])} if system.startswith("thumblab") \
        else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(out, "w") as stdout:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("WARNING clustering")]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--budget-mb", type=int, default=512, help="memory budget for thumblab and autofaiss")
    parser.add_argument("--systems", nargs="+", default=["thumblab", "autofaiss", "faiss_flat", "thumblab_flat"])
    parser.add_argument("--autofaiss-python", default=os.environ.get("AUTOFAISS_PYTHON"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, json.loads(args.files), args.budget_mb, Path(args.out_dir))
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="thumblab-bench-"))
    report = {"cpu_count": os.cpu_count(), "dim": args.dim, "queries": args.queries, "k": K,
              "budget_mb": args.budget_mb, "data": "unit-norm, 1,000 overlapping gaussian clusters", "sizes": {}}
    for n in args.sizes:
        workdir = root / str(n)
        start = time.perf_counter()
        files = prepare(workdir, n, args.dim, args.queries)
        results = {"prepare_s": round(time.perf_counter() - start, 1)}
        for system in args.systems:
            if system == "autofaiss" and not args.autofaiss_python:
                results[system] = {"skipped": "pass --autofaiss-python (a venv with autofaiss, numpy<2)"}
                continue
            python = args.autofaiss_python if system == "autofaiss" else sys.executable
            results[system] = run_worker(python, system, files, args.budget_mb, workdir)
            print(json.dumps({"n": n, system: results[system]}), file=sys.stderr, flush=True)
        results["verdict"] = verdict(results)
        report["sizes"][str(n)] = results
    print(json.dumps(report, indent=2))


def verdict(r: dict) -> dict:
    ours, af, flat, our_flat = (r.get(s, {}) for s in ("thumblab", "autofaiss", "faiss_flat", "thumblab_flat"))
    out = {}
    if "recall_at_10" in ours:
        out["recall_at_10_ge_0.95"] = ours["recall_at_10"] >= 0.95
    if "qps" in ours and "qps" in af:
        out["qps_vs_autofaiss"] = round(ours["qps"] / af["qps"], 3)
        out["build_time_vs_autofaiss"] = round(ours["build_s"] / af["build_s"], 3)
    if "qps" in flat and "qps" in our_flat:
        out["flat_search_overhead"] = round(flat["qps"] / our_flat["qps"] - 1, 3)
    return out


if __name__ == "__main__":
    main()
