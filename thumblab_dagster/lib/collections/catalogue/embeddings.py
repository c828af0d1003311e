"""A catalogue's CLIP embeddings, kept incrementally: only new products and changed images are fetched and embedded.

``plan`` compares the products with the previous embeddings: ``new`` (no vector yet), ``changed`` (its image URL,
or its ``image_version`` / ``updated_at`` where the products carry one, differs from the recorded one, or the
vector came from another model), ``kept`` and ``deleted``. ``embed_products`` fetches and embeds the products
to embed in batches with the thumbnails' image fetcher and CLIP embedder, skipping and counting broken images;
``merge`` lays the new vectors over the previous ones (kept vectors untouched, ids in a stable order).
A product whose image was broken has no row, so the next run plans it as new and tries again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from thumblab_dagster.lib.collections.catalogue.sample import sample_fetch_schemes
from thumblab_dagster.lib.embed.clip import DEFAULT_BATCH_SIZE as DEFAULT_CLIP_BATCH_SIZE
from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images, read_embeddings, weights_label, write_embeddings
from thumblab_dagster.lib.embed.images import DEFAULT_MAX_BYTES, TRANSPORT, FetchResult, fetch_images

_default_log = logging.getLogger(__name__)

EMBEDDING = "embedding"
# ``image_version``: the product's image_version (else updated_at) when it was embedded, "" when it has none.
EMBEDDINGS = ("id", "image_url", "image_sha256", "brand", "image_version", EMBEDDING, "model", "embedded_at")
VERSION_COLUMNS = ("image_version", "updated_at")  # a changed image at the same URL, where the products say so
DEFAULT_BATCH_SIZE = 256  # products fetched and embedded per batch: bounds the decoded images held at once
NO_BRAND = "(no brand)"

Fetch = Callable[[Sequence[str]], list[FetchResult]]


# --- plan --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What a run does with each product id (lists in the products' order; ``deleted`` in the previous order)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    model: str = ""
    to_embed: list[str] = field(default_factory=list)  # new and changed, in the products' order

    def rows_to_embed(self, products: pd.DataFrame) -> pd.DataFrame:
        """The products' rows to fetch and embed, in their order."""
        return products[products["id"].isin(set(self.to_embed))].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "changed": len(self.changed), "kept": len(self.kept),
                "deleted": len(self.deleted)}

    def summary(self) -> str:
        """``12 new, 3 changed, 285 kept, 1 deleted``."""
        return ", ".join(f"{n} {what}" for what, n in self.counts().items())


def model_identity(clip: LoadedClip) -> str:
    """The identity recorded beside each vector (``ViT-B-32|laion2b_s34b_b79k``): vectors of one identity mix."""
    return weights_label(clip.weights.as_dict())


def image_versions(products: pd.DataFrame) -> list[str]:
    """Each product's image version as text: its ``image_version``, else ``updated_at``, else ""."""
    column = next((c for c in VERSION_COLUMNS if c in products.columns), None)
    if column is None:
        return [""] * len(products)
    return ["" if pd.isna(v) else str(v) for v in products[column]]


def plan(products: pd.DataFrame, previous: pd.DataFrame | None, model_identity: str) -> Plan:
    """Which products need a vector. A vector from another model counts as changed, so a new model re-embeds all."""
    recorded = {}
    if previous is not None and len(previous):
        versions = previous["image_version"] if "image_version" in previous.columns else [""] * len(previous)
        recorded = {pid: (url, "" if pd.isna(version) else str(version), model) for pid, url, version, model
                    in zip(previous["id"], previous["image_url"], versions, previous["model"])}
    new, changed, kept = [], [], []
    for pid, url, version in zip(products["id"], products["image_url"], image_versions(products)):
        if pid not in recorded:
            new.append(pid)
            continue
        old_url, old_version, old_model = recorded[pid]
        version_moved = bool(version and old_version and version != old_version)
        (changed if old_model != model_identity or old_url != url or version_moved else kept).append(pid)
    current = set(products["id"])
    deleted = [pid for pid in recorded if pid not in current]
    to_embed = set(new) | set(changed)
    return Plan(new, changed, kept, deleted, model_identity, [pid for pid in products["id"] if pid in to_embed])


# --- embedding ---------------------------------------------------------------------------------------------

def product_fetcher(*, max_workers: int = 8, timeout_s: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES,
                    retries: int = 1, backoff_factor: float = 0.2, schemes: dict | None = None) -> Fetch:
    """The image fetcher for product images: http(s), files, and the sample's ``sample-product://``."""
    return functools.partial(fetch_images, max_workers=max_workers, timeout_s=timeout_s, max_bytes=max_bytes,
                             retries=retries, backoff_factor=backoff_factor,
                             schemes={**sample_fetch_schemes(), **(schemes or {})})


def image_sha256(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels a vector was made from (size included)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def empty_embeddings() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="datetime64[ns, UTC]" if c == "embedded_at" else object)
                         for c in EMBEDDINGS})


@dataclass
class Broken:
    """A product whose image could not be fetched or decoded."""

    id: str
    error: str
    kind: str | None
    label: str | None


def embed_batch(batch: pd.DataFrame, fetch: Fetch, clip: LoadedClip, *, model: str | None = None,
                embedded_at: datetime | None = None, clip_batch_size: int = DEFAULT_CLIP_BATCH_SIZE,
                ) -> tuple[pd.DataFrame, list[Broken]]:
    """Fetch and embed one batch of products: their EMBEDDINGS rows (input order, broken ones left out) and
    the broken ones. ``clip_batch_size``: images per CLIP forward."""
    model = model or model_identity(clip)
    embedded_at = embedded_at or datetime.now(timezone.utc)
    results = fetch(batch["image_url"].tolist())
    ok = [i for i, r in enumerate(results) if r.ok]
    broken = [Broken(pid, r.error or "?", r.kind, r.label)
              for pid, r in zip(batch["id"], results) if not r.ok]
    images = [results[i].image for i in ok]
    vectors = embed_images(clip, images, clip_batch_size) if images else np.empty((0, clip.dim), np.float32)
    rows, versions = batch.iloc[ok], image_versions(batch)
    frame = pd.DataFrame({
        "id": rows["id"].tolist(), "image_url": rows["image_url"].tolist(),
        "image_sha256": [image_sha256(img) for img in images], "brand": rows["brand"].tolist(),
        "image_version": [versions[i] for i in ok], EMBEDDING: list(vectors),
        "model": [model] * len(ok), "embedded_at": pd.Series([embedded_at] * len(ok), dtype="datetime64[ns, UTC]"),
    }, columns=list(EMBEDDINGS))
    return (frame if len(frame) else empty_embeddings()), broken


def batch_line(number: int, total: int, embedded: int) -> str:
    """The seed's progress line: ``Batch 3: Total=500, Embedded=497`` (products to embed this run, embedded
    so far)."""
    return f"Batch {number}: Total={total}, Embedded={embedded}"


def brand_lines(per_brand: dict[str, int]) -> list[str]:
    """The seed's per-brand lines, by brand: ``aw: 137 new vectors``."""
    return [f"{brand or NO_BRAND}: {n} new vector{'' if n == 1 else 's'}" for brand, n in sorted(per_brand.items())]


def embed_stats(total: int, embedded: pd.DataFrame, broken: Sequence[Broken]) -> dict:
    """The run's figures: total, embedded, broken, per_brand (new vectors by brand), failures by kind and
    label, transport (how many broke in transport: refused, timed out, 5xx), and the first broken examples."""
    return {
        "total": int(total), "embedded": int(len(embedded)), "broken": len(broken),
        "per_brand": {str(b): int(n) for b, n in sorted(Counter(embedded["brand"]).items())},
        "failures": dict(Counter(f"{b.kind}: {b.label}" for b in broken)),
        "transport": sum(b.kind == TRANSPORT for b in broken),
        "broken_examples": [f"{b.id}: {b.error}" for b in broken[:10]],
    }


def _say(log) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """(info, warning) of a logger-like object (Dagster's ``context.log``, a ``logging.Logger``) or a callable."""
    if hasattr(log, "info"):
        return log.info, getattr(log, "warning", log.info)
    return log, log


def embed_products(products: pd.DataFrame, fetch: Fetch, clip: LoadedClip, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   log=_default_log, embedded_at: datetime | None = None,
                   clip_batch_size: int = DEFAULT_CLIP_BATCH_SIZE) -> tuple[pd.DataFrame, dict]:
    """Fetch and embed ``products`` (the plan's rows to embed) ``batch_size`` at a time (``clip_batch_size``
    images per CLIP forward).

    Logs ``Batch N: Total=..., Embedded=...`` after each batch, each broken image (skipped, counted) and
    ``<brand>: N new vectors`` at the end. Returns the EMBEDDINGS rows (products' order) and ``embed_stats``.
    ``log``: a logger-like object (``context.log``) or a callable taking a line.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    info, warning = _say(log)
    model = model_identity(clip)
    embedded_at = embedded_at or datetime.now(timezone.utc)  # one time for the run
    total, frames, broken, done = len(products), [], [], 0
    for number, start in enumerate(range(0, total, batch_size), start=1):
        frame, failed = embed_batch(products.iloc[start:start + batch_size], fetch, clip, model=model,
                                    embedded_at=embedded_at, clip_batch_size=clip_batch_size)
        for b in failed:
            warning(f"skipped the image of {b.id} ({b.kind}): {b.error}")
        frames.append(frame)
        broken.extend(failed)
        done += len(frame)
        info(batch_line(number, total, done))
    return finish_run(frames, broken, total, info, warning)


def finish_run(frames: Sequence[pd.DataFrame], broken: Sequence[Broken], total: int, info, warning
               ) -> tuple[pd.DataFrame, dict]:
    """The run's rows (``frames`` in order) and stats, with the closing lines: the broken images, if
    any, and ``<brand>: N new vectors`` (in-process and on Ray alike)."""
    embedded = pd.concat(frames, ignore_index=True) if frames else empty_embeddings()
    stats = embed_stats(total, embedded, broken)
    if broken:
        warning(f"{len(broken)} of {total} images broken and skipped: "
                + ", ".join(f"{label} x{n}" for label, n in stats["failures"].items()))
    for line in brand_lines(stats["per_brand"]):
        info(line)
    return embedded, stats


# --- merge and files ---------------------------------------------------------------------------------------

def merge(previous: pd.DataFrame | None, embedded: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """The full embeddings after a run: previous rows in their order (kept ones untouched, changed ones
    replaced by their new vectors), then the new products' rows; deleted products, and changed ones whose
    image broke this time, are left out (a new vector is owed: the next run plans them as new)."""
    asked = set(plan.to_embed)
    stray = [pid for pid in embedded["id"] if pid not in asked]
    if stray:
        raise ValueError(f"{len(stray)} embedded rows are not in the plan (e.g. {stray[0]!r}): embed plan.to_embed")
    previous = empty_embeddings() if previous is None else previous
    kept, changed, new = set(plan.kept), set(plan.changed), set(plan.new)
    replaced = embedded[embedded["id"].isin(changed)]
    in_place = previous["id"][previous["id"].isin(kept | set(replaced["id"]))]
    old = pd.concat([_rows(previous[previous["id"].isin(kept)]), _rows(replaced)], ignore_index=True)
    old = old.set_index("id", drop=False).loc[in_place.tolist()]
    added = embedded[embedded["id"].isin(new)]
    merged = pd.concat([_rows(old), _rows(added)], ignore_index=True)
    return merged if len(merged) else empty_embeddings()


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the EMBEDDINGS columns (older files without image_version read as "")."""
    frame = frame.reset_index(drop=True)
    if "image_version" not in frame.columns:
        frame = frame.assign(image_version="")
    return frame[list(EMBEDDINGS)]


def vectors_of(frame: pd.DataFrame, dim: int | None = None) -> np.ndarray:
    """The frame's vectors as one (n, dim) float32 C-contiguous array (``dim`` for an empty frame)."""
    if not len(frame):
        return np.empty((0, dim or 0), np.float32)
    return np.ascontiguousarray(np.stack(frame[EMBEDDING].tolist()), dtype=np.float32)


def write_product_embeddings(path: str | os.PathLike, frame: pd.DataFrame, info: dict | None = None,
                             dim: int | None = None) -> Path:
    """Write the embeddings (vectors as a fixed-size list column; ``info`` in the schema) atomically."""
    vectors = vectors_of(frame, dim)
    if not vectors.shape[1]:
        raise ValueError("an empty embeddings frame needs dim= (the model's dimension) to be written")
    return write_embeddings(path, _rows(frame).drop(columns=[EMBEDDING]), vectors, dict(info or {}))


def read_product_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The embeddings frame (an ``embedding`` array per row) and the schema info (``dim`` among it)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"product embeddings {path} do not exist: materialise product_embeddings for "
                                "that catalogue first")
    frame, vectors, info = read_embeddings(path)
    frame = frame.assign(**{EMBEDDING: list(vectors)}) if len(frame) else frame.assign(**{EMBEDDING: []})
    return _rows(frame), info
