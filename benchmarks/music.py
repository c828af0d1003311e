"""The music collection (issue 14), printing one JSON object: similar_tracks speed at 100,000 tracks,
genre precision@10 raw vs standardised, and (``--analysis``) audio analysis throughput.

    .venv/bin/python benchmarks/music.py                                  # ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/music.py --tracks 10000 --queries 200     # a quick check of the script
    .venv/bin/python benchmarks/music.py --features FILE --label-column genre [--id-column track_id]
    .venv/bin/python benchmarks/music.py --analysis [--clips 3]           # + Essentia / MusiCNN on 30 s clips

1. ``similar_tracks``: ``--tracks`` synthetic analyses (20 genres, each a tag profile and a tempo, a
   third of them detected an octave off; random keys and chroma) go through the real path: ``encode``
   (67-d), ``Standardiser.fit``, ``build_music_index`` (engine build + manifest), ``MusicLibrary.load``.
   Built twice: ``Flat`` (IndexFlatIP, the issue's design and the small-library default) and the
   factory ``choose_index`` picks at the default memory budget (HNSW32 at 100,000). Then ``--queries``
   single ``similar(track_id, top_n=10)`` calls (one faiss thread each, as the service runs them),
   p50/p99 in ms, beside the bare engine search of the same vectors and ``similar(raw_vector)`` (a new
   file's features: standardise + search). Recall@10 of the chosen index against Flat is reported.
2. ``genre_precision``: a labelled feature table (``--features`` CSV/parquet read by ``read_features``,
   ``--label-column`` excluded from the features; default: a generated table, 10 genres planted in seven
   0..1 columns, beside tempo in BPM, loudness in dB, key 0..11 and mode 0/1, where tempo and loudness
   carry a little genre signal at a scale that swamps the rest). Precision@10 (the share of a track's 10
   nearest, itself left out, with its label) over ``--precision-queries`` tracks, exact search, for:
   ``raw_inner_product`` (raw numbers into IndexFlatIP, the issue's design), ``raw_cosine`` (the same,
   L2-normalised) and ``standardised`` (the library's ``Standardiser``). Random is about 1 / genres.
3. ``analysis`` (``--analysis``): ``--clips`` synthesised 30 s clips (``synthetic.synthesise_track``)
   analysed by ``analysis.analyse`` with ``include_tensorflow`` False (Essentia alone) and True (with
   MusiCNN), clips a second after one warm-up call each (model load reported apart). Skipped, with the
   reason in the JSON, when the analysis module cannot be imported.

Targets (issue 14): similar_tracks p50 <= 1 ms at 100,000 tracks; standardised P@10 >= 2 x raw. The
``met`` flags compare against both raw variants. The machine's load average is reported: other
processes on these cores move every timing.
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

TARGET_P50_MS = 1.0
TARGET_PRECISION_RATIO = 2.0
K = 10
GENRES = 20
KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def ms_percentiles(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 4), "p99_ms": round(float(np.percentile(values, 99)), 4),
            "mean_ms": round(float(values.mean()), 4)}


# --- 1. similar_tracks at scale ------------------------------------------------------------------------

def synthetic_analyses(n: int, seed: int = 0):
    """``Analysis.to_json``-shaped dicts: genre tag profiles, genre tempos with octave errors."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, GENRES, n)
    profiles = rng.beta(0.6, 2.0, (GENRES, 50))
    tags = np.clip(profiles[genre] + rng.normal(0, 0.08, (n, 50)), 0, 1)
    tempo = rng.uniform(70, 170, GENRES)[genre] * rng.choice([0.5, 1.0, 1.0, 1.0, 1.0, 2.0], n) + rng.normal(0, 2, n)
    chroma = rng.uniform(0.05, 1, (n, 12))
    chroma /= chroma.max(axis=1, keepdims=True)
    keys, scales = rng.integers(0, 12, n), rng.integers(0, 2, n)
    for i in range(n):
        yield {"tempo_bpm": float(tempo[i]), "key": KEYS[keys[i]], "scale": ("major", "minor")[scales[i]],
               "chroma": chroma[i], "tags": tags[i]}


def similar_tracks(args, workdir: Path) -> dict:
    import pandas as pd

    from thumblab_dagster.lib.collections.music.library import MusicLibrary, build_music_index
    from thumblab_dagster.lib.collections.music.vectors import CORE_NAMES, TAG_DIMS, encode_many
    from thumblab_dagster.lib.engine.choice import choose_index
    from thumblab_dagster.lib.engine.spec import DEFAULT_MEMORY_BUDGET, IndexSpec

    n = args.tracks
    started = time.perf_counter()
    raw = encode_many(synthetic_analyses(n))
    encode_s = time.perf_counter() - started
    names = [*(f"tags:{i}" for i in range(TAG_DIMS)), *CORE_NAMES]   # tag names only label the manifest
    ids = [f"{i:012x}" for i in range(n)]
    metadata = pd.DataFrame({"file_id": ids, "path": [f"library/{i}.flac" for i in ids],
                             "title": [f"Track {i}" for i in range(n)], "artist": [f"Artist {i % 5000}" for i in range(n)]})
    rng = np.random.default_rng(7)
    queries = rng.choice(n, min(args.queries, n), replace=False)
    chosen = choose_index(n, raw.shape[1], DEFAULT_MEMORY_BUDGET)
    out = {"tracks": n, "dim": int(raw.shape[1]), "queries": len(queries), "top_n": K,
           "encode_seconds": round(encode_s, 2), "indexes": {}}
    answers = {}
    for label, factory in (("flat", "Flat"), ("chosen", None)):
        if label == "chosen" and chosen == "Flat":
            out["indexes"]["chosen"] = {"same_as": "flat"}
            continue
        target = workdir / f"library_{label}"
        started = time.perf_counter()
        manifest, standardiser = build_music_index(target, raw, ids, names, metadata=metadata, id_column="file_id",
                                                   spec=IndexSpec(factory=factory))
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        library = MusicLibrary.load(target, name="music")
        load_s = time.perf_counter() - started
        vectors = standardiser.transform(raw[queries])
        similar_s, bare_s, vector_s, found = [], [], [], []
        library.similar(ids[queries[0]], top_n=K)          # warm: first touch of the index pages
        for q, vector in zip(queries, vectors):
            start = time.perf_counter()
            hits = library.similar(ids[q], top_n=K)
            similar_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            library.loaded.search(vector[None, :], K + 1)
            bare_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            library.similar(raw[q], top_n=K)
            vector_s.append(time.perf_counter() - start)
            found.append({h["id"] for h in hits})
        answers[label] = found
        out["indexes"][label] = {
            "factory": manifest.factory, "index_type": library.index_type(),
            "search_params": dict(manifest.search_params),
            "build_seconds": round(build_s, 2), "engine_build_seconds": manifest.build_seconds,
            "engine_build_seconds_by_stage": manifest.build_seconds_by_stage, "load_seconds": round(load_s, 3),
            "similar_by_id": ms_percentiles(similar_s), "engine_search_only": ms_percentiles(bare_s),
            "similar_by_raw_vector": ms_percentiles(vector_s),
            "p50_target_ms": TARGET_P50_MS, "p50_met": ms_percentiles(similar_s)["p50_ms"] <= TARGET_P50_MS}
        print(json.dumps({"similar_tracks": label, **out["indexes"][label]}), file=sys.stderr, flush=True)
        del library
    if "chosen" in answers:
        recall = np.mean([len(a & b) / max(len(a), 1) for a, b in zip(answers["chosen"], answers["flat"])])
        out["indexes"]["chosen"]["recall_at_10_vs_flat"] = round(float(recall), 4)
    out["library_default"] = "chosen" if chosen != "Flat" else "flat"   # what build_music_index picks by itself
    return out


# --- 2. genre precision@10 --------------------------------------------------------------------------------

def generated_table(path: Path, n: int, genres: int = 10, noise: float = 0.15, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    genre = rng.integers(0, genres, n)
    signal = ["danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence"]
    means = rng.uniform(0.15, 0.85, (genres, len(signal)))
    values = np.clip(means[genre] + rng.normal(0, noise, (n, len(signal))), 0, 1)
    frame = pd.DataFrame(values, columns=signal)
    frame.insert(0, "track_id", [f"T{i:07d}" for i in range(n)])
    frame["tempo"] = np.clip(rng.uniform(95, 140, genres)[genre] + rng.normal(0, 25, n), 50, 220).round(3)
    frame["loudness"] = np.clip(rng.uniform(-14, -5, genres)[genre] + rng.normal(0, 4, n), -40, 0).round(3)
    frame["key"] = rng.integers(0, 12, n)
    frame["mode"] = rng.integers(0, 2, n)
    frame["genre"] = [f"genre {g}" for g in genre]
    frame.to_csv(path, index=False)


def precision_at_k(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int = K) -> float:
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors[queries], k + 1)
    shares = [np.mean(labels[[f for f in row if f != q][:k]] == labels[q]) for q, row in zip(queries, found)]
    return float(np.mean(shares))


def genre_precision(args, workdir: Path) -> dict:
    from thumblab_dagster.lib.collections.music.features_table import read_features
    from thumblab_dagster.lib.collections.music.vectors import Standardiser

    if args.features:
        path, source = Path(args.features), str(args.features)
        if not args.label_column:
            raise SystemExit("--features needs --label-column: the column holding each track's genre")
        label_column, id_column = args.label_column, args.id_column
    else:
        path, label_column, id_column = workdir / "features.csv", "genre", "track_id"
        generated_table(path, args.table_tracks)
        source = (f"generated: {args.table_tracks:,} tracks, 10 genres in 7 columns of 0..1 (noise sd 0.15), "
                  "tempo (BPM) and loudness (dB) with a little genre signal, key and mode random")
    started = time.perf_counter()
    ids, matrix, names, metadata = read_features(path, id_column, exclude_columns=[label_column])
    read_s = time.perf_counter() - started
    labels = metadata[label_column].astype(str).to_numpy()
    raw = matrix.astype(np.float64)
    queries = np.random.default_rng(3).choice(len(raw), min(args.precision_queries, len(raw)), replace=False)
    standardised = Standardiser.fit(raw, names).transform(raw)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    results = {"raw_inner_product": precision_at_k(raw, labels, queries),
               "raw_cosine": precision_at_k(np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 0), labels, queries),
               "standardised": precision_at_k(standardised, labels, queries)}
    counts = np.unique(labels, return_counts=True)[1]
    ratios = {f"standardised_over_{key}": round(results["standardised"] / value, 2) if value else None
              for key, value in results.items() if key != "standardised"}
    return {"table": source, "tracks": len(raw), "features": list(names), "label_column": label_column,
            "labels": len(counts), "queries": len(queries), "read_seconds": round(read_s, 2),
            "precision_at_10": {key: round(value, 4) for key, value in results.items()},
            "random_precision": round(float(np.sum((counts / counts.sum()) ** 2)), 4), **ratios,
            "target_ratio": TARGET_PRECISION_RATIO,
            "met": {key: value is not None and value >= TARGET_PRECISION_RATIO for key, value in ratios.items()}}


# --- 3. analysis throughput ---------------------------------------------------------------------------------

def analysis_throughput(args, workdir: Path) -> dict:
    try:
        from thumblab_dagster.lib.collections.music.analysis import analyse
        from thumblab_dagster.lib.collections.music.synthetic import synthesise_track
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip, and say why
        return {"skipped": f"the analysis module cannot be imported ({type(exc).__name__}: {exc})"}
    clips = []
    for i in range(args.clips):
        path = workdir / f"clip_{i}.wav"
        synthesise_track(path, tempo_bpm=90.0 + 15 * i, key=KEYS[(7 * i) % 12], scale=("minor", "major")[i % 2],
                         seconds=30.0, style=("clicks", "pads")[i % 2], seed=i)
        clips.append(path)
    out = {"clips": len(clips), "clip_seconds": 30.0}
    for label, include_tensorflow in (("essentia", False), ("essentia_and_musicnn", True)):
        try:
            start = time.perf_counter()
            analyse(clips[0], include_tensorflow=include_tensorflow)     # warm-up: imports, model load
            warm_s = time.perf_counter() - start
            start = time.perf_counter()
            for clip in clips:
                analyse(clip, include_tensorflow=include_tensorflow)
            total = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - MusiCNN may be missing where Essentia is not
            out[label] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            continue
        out[label] = {"first_call_seconds": round(warm_s, 2), "seconds_per_clip": round(total / len(clips), 3),
                      "clips_per_second": round(len(clips) / total, 3),
                      "audio_seconds_per_second": round(30.0 * len(clips) / total, 1)}
        print(json.dumps({"analysis": label, **out[label]}), file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000, help="synthetic tracks for the similar_tracks part")
    parser.add_argument("--queries", type=int, default=1000, help="single similar_tracks queries timed")
    parser.add_argument("--features", type=Path, default=None, help="a labelled feature table (.csv/.parquet)")
    parser.add_argument("--label-column", default=None, help="the table's label (genre) column")
    parser.add_argument("--id-column", default=None, help="the table's id column (default: row numbers)")
    parser.add_argument("--table-tracks", type=int, default=20_000, help="rows of the generated table")
    parser.add_argument("--precision-queries", type=int, default=2000)
    parser.add_argument("--analysis", action="store_true", help="also time Essentia / MusiCNN on 30 s clips")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--skip-similar", action="store_true", help="only the precision (and analysis) parts")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = {"benchmark": "music"}
    with tempfile.TemporaryDirectory(prefix="music-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_similar:
            result["similar_tracks"] = similar_tracks(args, workdir)
        result["genre_precision"] = genre_precision(args, workdir)
        if args.analysis:
            result["analysis"] = analysis_throughput(args, workdir)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
