"""A catalogue from product table to published, checked, uploaded sharded index: the steps the Dagster
assets call one by one and ``thumblab catalogue build`` runs through them.

    snapshot_products   catalogue_products: the products (sample, a file, or Supabase), as parquet
    embed_new           product_embeddings: only new products and those whose image changed are fetched
                        and embedded (in-process, or on Ray with THUMBLAB_RAY_ADDRESS)
    build_index         catalogue_index: new products appended without retraining when nothing else
                        changed; a full build when products left, changed, or the model did
    check_alignment     the blocking check: the seed's checker (sanity, re-encoded random search, shards)
    publish_catalogue   ``<publish_dir>/<name>/`` in the seed's names, as one set
    upload_catalogue    ``<bucket>/<prefix>/<name>/``, every file verified, the id map last

No Dagster here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.catalogue import embeddings as emb
from thumblab_dagster.lib.collections.catalogue.checker import CheckReport
from thumblab_dagster.lib.collections.catalogue.checker import check_alignment as seed_check
from thumblab_dagster.lib.collections.catalogue.layout import CatalogueLayout, check_catalogue_name, shard_prefix
from thumblab_dagster.lib.collections.catalogue.shards import (
    append_products,
    build_catalogue_index,
    publish_layout,
    seed_id_map_name,
)
from thumblab_dagster.lib.collections.catalogue.source import DEFAULT_TABLE, read_products
from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images
from thumblab_dagster.lib.engine import stats as index_stats
from thumblab_dagster.lib.engine.files import FILE_MODE, write_json_atomic
from thumblab_dagster.lib.engine.index_dir import MANIFEST_FILE, read_manifest
from thumblab_dagster.lib.engine.manifest import IndexIntegrityError, Manifest
from thumblab_dagster.lib.engine.publish import PublishResult, load_published, publish, snapshot_of
from thumblab_dagster.lib.engine.shards import load_any
from thumblab_dagster.lib.engine.spec import DEFAULT_MEMORY_BUDGET, IndexSpec, resolve_spec
from thumblab_dagster.lib.engine.tune import DEFAULT_TARGET_RECALL, verify_recall
from thumblab_dagster.lib.engine.validate import AlignmentReport

log = logging.getLogger(__name__)

METADATA_COLUMNS = ("id", "brand", "image_url", "image_sha256", "image_version")
CHECK_SAMPLE = 200


@dataclass(frozen=True)
class CatalogueSettings:
    """How a catalogue is read, embedded and indexed (``THUMBLAB_CATALOGUE_*``, ``THUMBLAB_RAY_ADDRESS``)."""

    source: str = "sample"
    table: str = DEFAULT_TABLE
    shard_size: int = 100_000
    batch_size: int = emb.DEFAULT_BATCH_SIZE
    ray_address: str | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    target_recall: float = DEFAULT_TARGET_RECALL
    check_sample: int = CHECK_SAMPLE


# --- catalogue_products -------------------------------------------------------------------------

def remember_source(layout: CatalogueLayout, name: str, source: str, table: str | None = None) -> None:
    """Record where ``name``'s products come from (``thumblab catalogue build --source``), so every later
    materialisation of that partition (the UI, a schedule) reads the same source."""
    write_json_atomic(layout.source(name), {"source": str(source), "table": table or DEFAULT_TABLE})


def source_of(layout: CatalogueLayout, name: str, settings: CatalogueSettings) -> tuple[str, str]:
    """(source, table): the catalogue's recorded source, else the settings'."""
    try:
        recorded = json.loads(layout.source(name).read_text())
        return str(recorded["source"]), str(recorded.get("table") or settings.table)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return settings.source, settings.table


def snapshot_products(layout: CatalogueLayout, name: str, settings: CatalogueSettings, supabase=None) -> pd.DataFrame:
    """Read the catalogue's products and write the snapshot (atomically); raises CatalogueSourceError (one line)."""
    source, table = source_of(layout, check_catalogue_name(name), settings)
    products = read_products(source, table=table, supabase=supabase)
    target = layout.products(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    products.to_parquet(staged, index=False)
    os.replace(staged, target)
    return products


# --- product_embeddings ---------------------------------------------------------------------------

@dataclass
class EmbedRun:
    plan: emb.Plan
    stats: dict
    total: int                       # products with a vector after the run
    dim: int
    model: str

    def as_dict(self) -> dict:
        return {**self.plan.counts(), "embedded": self.stats.get("embedded", 0), "broken": self.stats.get("broken", 0),
                "per_brand": self.stats.get("per_brand", {}), "total_vectors": self.total, "model": self.model,
                "broken_examples": self.stats.get("broken_examples", [])}


def previous_embeddings(layout: CatalogueLayout, name: str) -> pd.DataFrame | None:
    path = layout.embeddings(name)
    return emb.read_product_embeddings(path)[0] if path.exists() else None


def embed_new(layout: CatalogueLayout, name: str, clip: LoadedClip, settings: CatalogueSettings, *,
              fetch: emb.Fetch | None = None, log_to=log, clip_settings: dict | None = None) -> EmbedRun:
    """Embed only what is new or changed (or everything, under another model); write the merged embeddings."""
    products = pd.read_parquet(layout.products(name))
    previous = previous_embeddings(layout, name)
    model = emb.model_identity(clip)
    plan = emb.plan(products, previous, model)
    rows = plan.rows_to_embed(products)
    log_to.info(f"catalogue {name}: {plan.summary()}; embedding {len(rows)} product(s)")
    if settings.ray_address:
        from thumblab_dagster.lib.collections.catalogue.ray_backend import ray_embed

        embedded, stats = ray_embed(rows, address=settings.ray_address, batch_size=settings.batch_size,
                                    fetch=fetch, log=log_to, **(clip_settings or {}))
    else:
        embedded, stats = emb.embed_products(rows, fetch or emb.product_fetcher(), clip,
                                             batch_size=settings.batch_size, log=log_to)
    merged = emb.merge(previous, embedded, plan)
    dim = int(clip.dim)
    emb.write_product_embeddings(layout.embeddings(name), merged, {"model": model}, dim=dim)
    return EmbedRun(plan, stats, len(merged), dim, model)


# --- catalogue_index ------------------------------------------------------------------------------

def _metadata(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[:, [c for c in METADATA_COLUMNS if c in frame.columns]].reset_index(drop=True)


def _spec(name: str, settings: CatalogueSettings, model: str, source: str) -> IndexSpec:
    return IndexSpec(memory_budget_bytes=settings.memory_budget_bytes, target_recall=settings.target_recall,
                     id_column="id", source_partitions=[name], embedding={"identity": model, "model": model},
                     extra={"catalogue": name, "shard_prefix": shard_prefix(name), "products_from": source})


def append_only(live, current: pd.DataFrame) -> pd.DataFrame | None:
    """The rows to append when the live index holds exactly the current products it had, unchanged
    (same ids, same image checksums, same model); None when a full build is needed."""
    if live is None or live.manifest.embedding.get("identity") != (current["model"].iloc[0] if len(current) else None):
        return None
    live_ids = [str(i) for i in live.ids.tolist()]
    by_id = current.set_index("id", drop=False)
    if not set(live_ids) <= set(by_id.index):
        return None                                        # products left: a full build drops them
    live_meta = pd.read_parquet(live.directory / live.manifest.file_name("metadata.parquet"))
    if list(live_meta["id"].astype(str)) != live_ids:
        return None
    now = by_id.loc[live_ids, "image_sha256"].astype(str).tolist()
    if now != live_meta["image_sha256"].astype(str).tolist():
        return None                                        # an image changed: its vector moved
    return current[~current["id"].isin(set(live_ids))].reset_index(drop=True)


def build_index(layout: CatalogueLayout, name: str, settings: CatalogueSettings, *, force_full: bool = False,
                log_to=log) -> tuple[Manifest, str]:
    """(manifest, how): ``append`` (new products only, no retraining), ``unchanged`` (nothing new: the live
    index again) or ``full`` (every product)."""
    current, _ = emb.read_product_embeddings(layout.embeddings(name))
    if not len(current):
        raise ValueError(f"catalogue {name}: no product has a vector yet: materialise product_embeddings first "
                         "(or every image failed: see its metadata)")
    model = str(current["model"].iloc[0])
    source, _ = source_of(layout, name, settings)
    target = layout.index_dir(name)
    live = _live(layout, name) if not force_full else None
    new = append_only(live, current) if live is not None else None
    if new is not None:
        log_to.info(f"catalogue {name}: appending {len(new)} new product(s) to {live.ntotal} (no retraining)")
        manifest = append_products(live, target, emb.vectors_of(new, dim=live.manifest.dim), new["id"].tolist(),
                                   shard_size=settings.shard_size, embedding=live.manifest.embedding,
                                   metadata=_metadata(new), extra={"catalogue": name})
        return manifest, "append" if len(new) else "unchanged"
    log_to.info(f"catalogue {name}: full build of {len(current)} product(s) in shards of {settings.shard_size}")
    vectors = emb.vectors_of(current)
    if settings.ray_address:
        manifest = _ray_full_build(target, vectors, current, name, settings, model, source)
    else:
        manifest = build_catalogue_index(target, vectors, current["id"].tolist(), shard_size=settings.shard_size,
                                         spec=resolve_spec(_spec(name, settings, model, source),
                                                           metadata=_metadata(current)))
    return manifest, "full"


def _ray_full_build(target: Path, vectors: np.ndarray, current: pd.DataFrame, name: str,
                    settings: CatalogueSettings, model: str, source: str) -> Manifest:
    """The full build with its shards filled by parallel Ray tasks (one trained empty index, copied)."""
    from thumblab_dagster.lib.collections.catalogue.ray_backend import ray_build_catalogue_index

    return ray_build_catalogue_index(target, vectors, current["id"].tolist(), shard_size=settings.shard_size,
                                     spec=resolve_spec(_spec(name, settings, model, source),
                                                       metadata=_metadata(current)),
                                     address=settings.ray_address)


def _live(layout: CatalogueLayout, name: str):
    """The published catalogue (what appends build on), or None."""
    manifest_path = layout.catalogue(name) / MANIFEST_FILE
    if not manifest_path.exists():
        return None
    try:
        return load_published(layout.published, name, layout=publish_layout(name, shard_prefix(name),
                                                                              read_manifest(manifest_path)))
    except (FileNotFoundError, IndexIntegrityError, ValueError):
        return None


# --- checks ----------------------------------------------------------------------------------------

def reencoder(clip: LoadedClip, fetch: emb.Fetch | None = None) -> Callable[[list[str]], np.ndarray]:
    """Image URLs -> vectors with ``clip`` (the recorded model): the checker's re-encoding."""
    fetch = fetch or emb.product_fetcher()

    def encode(urls: list[str]) -> np.ndarray:
        results = fetch(urls)
        out = np.full((len(urls), clip.dim), np.nan, dtype=np.float32)
        good = [i for i, r in enumerate(results) if r.ok]
        if good:
            out[good] = embed_images(clip, [results[i].image for i in good])
        return out

    return encode


def check(layout: CatalogueLayout, name: str | None, clip: LoadedClip | None, *,
          directory: str | Path | None = None, sample: int = CHECK_SAMPLE, fetch: emb.Fetch | None = None,
          out: Callable[[str], None] = log.info, seed: int = 0) -> CheckReport:
    """The seed's checker on the index directory (or ``directory``), re-encoding sampled images with ``clip``;
    ``name`` None (with ``directory``): the catalogue its id map names."""
    directory = Path(directory) if directory is not None else layout.index_dir(name)
    urls = _urls(directory)
    return seed_check(directory, sample=sample, encode=reencoder(clip, fetch) if clip is not None else None,
                      urls_by_id=urls, out=out, seed=seed, name=name)


def _urls(directory: Path) -> dict[str, str]:
    try:
        manifest = read_manifest(directory)
        meta = pd.read_parquet(directory / manifest.file_name("metadata.parquet"), columns=["id", "image_url"])
    except (FileNotFoundError, IndexIntegrityError, KeyError, ValueError):
        return {}
    return dict(zip(meta["id"].astype(str), meta["image_url"].astype(str)))


def as_alignment_report(report: CheckReport) -> AlignmentReport:
    return AlignmentReport(report.passed, list(report.problems), dict(report.metrics))


def check_recall(layout: CatalogueLayout, name: str) -> dict:
    directory = layout.index_dir(name)
    loaded = load_any(directory, verify=False)
    current, _ = emb.read_product_embeddings(layout.embeddings(name))
    by_id = current.set_index("id")
    vectors = emb.vectors_of(by_id.loc[[str(i) for i in loaded.ids.tolist()]].reset_index())
    return verify_recall(loaded, vectors)


# --- publish, stats, upload ------------------------------------------------------------------------

def publish_catalogue(layout: CatalogueLayout, name: str, mode: int = FILE_MODE) -> PublishResult:
    directory = layout.index_dir(name)
    manifest = read_manifest(directory)
    return publish(directory, layout.published, name, snapshot_of(manifest), mode=mode,
                   layout=publish_layout(name, shard_prefix(name), manifest))


def catalogue_stats(layout: CatalogueLayout, name: str) -> tuple[dict, bytes]:
    directory = layout.index_dir(name)
    manifest = read_manifest(directory)
    loaded = load_any(directory, verify=False)
    measured = index_stats.measure(loaded)
    nn = measured.pop("nn_similarity")
    meta = pd.read_parquet(directory / manifest.file_name("metadata.parquet"), columns=["brand"])
    stats = {"catalogue": name, "products": loaded.ntotal, "shards": len(manifest.shards or []),
             "shard_size": manifest.shard_size, "factory": manifest.factory, "dim": manifest.dim,
             "per_brand": meta["brand"].astype(str).value_counts().sort_index().to_dict(),
             "total_bytes": sum(e.bytes for e in manifest.files.values()), **measured}
    write_json_atomic(layout.stats(name), stats)
    return stats, index_stats.histogram_png(nn, f"{name}: nearest-neighbour similarity of products")


def upload_catalogue(layout: CatalogueLayout, name: str, destination, log_to=log) -> dict:
    """The published set to ``<destination>/<name>/``: every file put and verified (size + sha256 read
    back), the manifest next to last and the id map last, so a reader that sees the new id map finds
    every file it names."""
    directory = Path(os.path.realpath(layout.catalogue(name)))
    manifest = read_manifest(directory / MANIFEST_FILE)
    id_map = seed_id_map_name(name)
    files = sorted(manifest.file_name(f) for f in manifest.files)
    problems = [f for f in files if not (directory / f).is_file()]
    if problems:
        raise IndexIntegrityError(f"not uploading {directory}: missing {', '.join(problems[:5])}")
    order = [f for f in files if f != id_map] + [MANIFEST_FILE] + ([id_map] if id_map in files else [])
    total = 0
    for file in order:
        destination.put(directory / file, f"{name}/{file}")
        total += (directory / file).stat().st_size
    log_to.info(f"uploaded {len(order)} files ({total:,} bytes) to {destination.description}/{name}/, id map last")
    return {"destination": f"{destination.description}/{name}/", "files": order, "bytes": total,
            "version": manifest.get("snapshot")}


# --- search ---------------------------------------------------------------------------------------

def search_image(layout: CatalogueLayout, name: str, image: str, clip: LoadedClip, k: int = 10,
                 fetch: emb.Fetch | None = None) -> list[dict]:
    """The ``k`` published products nearest ``image`` (a file path or a URL), best first, with their cosine."""
    live = _live(layout, name)
    if live is None:
        raise FileNotFoundError(f"no catalogue {name!r} is published under {layout.published}: "
                                "thumblab catalogue build first")
    if live.manifest.embedding.get("identity") != emb.model_identity(clip):
        raise ValueError(f"catalogue {name} was embedded with {live.manifest.embedding.get('identity')}, not "
                         f"{emb.model_identity(clip)}: set THUMBLAB_CLIP_MODEL / THUMBLAB_CLIP_PRETRAINED to match")
    url = image if "://" in image else Path(image).absolute().as_uri()
    [result] = (fetch or emb.product_fetcher())([url])
    if not result.ok:
        raise ValueError(f"{image}: cannot read the image ({result.error})")
    query = embed_images(clip, [result.image])
    scores, positions = live.searcher.search(query, k)
    meta = pd.read_parquet(live.directory / live.manifest.file_name("metadata.parquet"))
    hits = []
    for score, position in zip(scores[0], positions[0]):
        if position < 0:
            continue
        row = meta.iloc[int(position)]
        hits.append({"id": str(live.ids[int(position)]), "cosine": float(score), "brand": str(row.get("brand", "")),
                     "image_url": str(row.get("image_url", "")), "position": int(position)})
    return hits
