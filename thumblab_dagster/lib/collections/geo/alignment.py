"""A viewport's blocking alignment check: store, mosaic and sampled index in step.

``viewport_alignment`` adds to the engine's own index validation (``validate_index_dir``: counts,
checksums, stored vectors finding themselves) what only the viewport knows:

- the stored pixels equal the GeoTIFF at a seeded random sample of positions (codes and nodata
  flags; ``mosaic_problems``), and the mosaic's fingerprint is the one recorded;
- the counts agree: the index holds one vector per grid sample, as metadata.json says;
- sample j's vector decodes nearest to pixel(j): its stored float32 row (when the index keeps
  one) is nearest to the decoded pixel ``grid_positions[j]`` among the check's sampled pixels
  (ties with identical pixels allowed), and so are its compressed codes for all but
  ``CODE_MISS_SHARE`` of the sample (a lossy code may land nearer a look-alike pixel of the
  same land cover; an id map out of step misses nearly every one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.collections.geo.mosaic import MAX_STRIP_BYTES, fingerprint, open_mosaic, read_strips
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.lib.engine.index_dir import load_index_dir
from thumblab_dagster.lib.engine.validate import AlignmentReport, validate_index_dir

DEFAULT_SAMPLE = 200
TIE = 1e-6              # cosine: two identical pixels (common in uint8 mosaics: water, cloud) tie
CODE_MISS_SHARE = 0.1   # compressed codes may decode nearer a look-alike pixel; a shifted id map misses nearly all


def mosaic_problems(store: PixelStore, mosaic_path: str | os.PathLike, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                    max_strip_bytes: int = MAX_STRIP_BYTES) -> list[str]:
    """Where the store differs from its mosaic: shape, fingerprint, and codes and nodata flags at
    ``sample`` seeded random pixels (read from the mosaic strip by strip). Empty when they agree."""
    mosaic = open_mosaic(mosaic_path, expected_bands=None)
    if (mosaic.height, mosaic.width, mosaic.bands) != (store.height, store.width, store.bands):
        return [f"the store is {store.height} x {store.width} x {store.bands}, the mosaic "
                f"{mosaic.height} x {mosaic.width} x {mosaic.bands}"]
    problems = []
    if fingerprint(mosaic.path) != store.metadata["mosaic_fingerprint"]:
        problems.append(f"{mosaic.path.name} changed since the store was built (fingerprint differs)")
    picked = np.sort(np.random.default_rng(seed).choice(store.n, size=min(sample, store.n), replace=False))
    wrong = []
    for strip in read_strips(mosaic, store.scale, max_strip_bytes):
        lo = strip.row0 * store.width
        here = picked[(picked >= lo) & (picked < lo + len(strip.codes))]
        if len(here):
            bad = ~np.all(np.asarray(store.codes[here]) == strip.codes[here - lo], axis=1)
            bad |= np.asarray(store.nodata[here]) != strip.nodata[here - lo]
            wrong += here[bad].tolist()
    if wrong:
        shown = ", ".join(f"{p} (row {p // store.width}, col {p % store.width})" for p in wrong[:5])
        problems.append(f"{len(wrong)}/{len(picked)} sampled pixels differ from the mosaic: {shown}")
    return problems


def sample_problems(store: PixelStore, index, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> list[str]:
    """Counts, and sample j's vector in the index (an engine ``LoadedIndex``) decoding nearest to pixel(j)."""
    positions = store.sample_positions()
    recorded = int(store.metadata["num_sampled_pixels"])
    if not index.ntotal == len(positions) == recorded:
        return [f"counts differ: index {index.ntotal:,}, grid sample {len(positions):,}, "
                f"metadata.json num_sampled_pixels {recorded:,}"]
    rows = np.sort(np.random.default_rng(seed).choice(len(positions), size=min(sample, len(positions)), replace=False))
    pixels = store.vectors(positions[rows])
    pixels /= np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)
    problems = []
    readings = {"codes": (lambda j: index.searcher.reconstruct(int(j), from_codes=True), CODE_MISS_SHARE)}
    if index.searcher.stored is not None:
        readings["stored vectors"] = (lambda j: index.searcher.reconstruct(int(j)), 0.0)
    for what, (read, allowed) in readings.items():
        decoded = np.vstack([read(j) for j in rows]).astype(np.float32)
        decoded /= np.maximum(np.linalg.norm(decoded, axis=1, keepdims=True), 1e-12)
        similarity = decoded @ pixels.T
        own = np.diagonal(similarity)
        wrong = np.flatnonzero(own < similarity.max(axis=1) - TIE)     # identical pixels tie: not a miss
        if len(wrong) > allowed * len(rows):
            nearest = np.argmax(similarity[wrong], axis=1)
            shown = ", ".join(f"sample {rows[i]} is nearest to pixel {positions[rows[j]]}"
                              for i, j in zip(wrong[:5], nearest[:5]))
            problems.append(f"{len(wrong)}/{len(rows)} index {what} are out of step with their pixels: {shown}")
    return problems


def viewport_alignment(store_dir: str | os.PathLike, index_dir: str | os.PathLike,
                       mosaic_path: str | os.PathLike | None = None, sample: int = DEFAULT_SAMPLE,
                       seed: int = 0) -> AlignmentReport:
    """The blocking check before publishing a viewport: the engine's index validation, the store
    against its mosaic (when ``mosaic_path`` is given) and the grid sample against the index."""
    report = validate_index_dir(index_dir, sample=sample, seed=seed)
    problems, metrics = list(report.problems), dict(report.metrics)
    try:
        store = PixelStore(store_dir)
    except ValueError as exc:
        return AlignmentReport(False, problems + [str(exc)], metrics)
    if mosaic_path is not None:
        problems += mosaic_problems(store, mosaic_path, sample, seed)
    try:
        index = load_index_dir(index_dir, verify=False)
    except Exception as exc:  # reported by validate_index_dir already; nothing more to compare
        return AlignmentReport(False, problems or [f"cannot load {Path(index_dir)}: {exc}"], metrics)
    problems += sample_problems(store, index, sample, seed)
    metrics.update({"pixels": store.n, "nodata_pixels": int(store.metadata["nodata_pixels"]),
                    "sampled_pixels": int(store.metadata["num_sampled_pixels"])})
    return AlignmentReport(not problems, problems, metrics)
