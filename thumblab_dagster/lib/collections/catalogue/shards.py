"""The catalogue's sharded index, in the seed's file names, appended to without retraining.

The index directory is the engine's sharded layout (``shard_00000.index``, ..., ``id_map.json``
listing the shards, ``ids.npy``, ``manifest.json``) plus ``ids.json``: the product ids by global
position as a JSON list, the seed's id map. Published (``publish_layout``), the files take the
seed's names, ``<prefix>_shard_00000.index``, ... and ``id_map_<name>.json``; the manifest records
the renaming (``published_names``), so the engine loads the published copy as it is and the seed's
consumers read the very same set.

New products are appended (``append_products``): the open last shard is filled first, in a clone
that keeps its trained quantizer, then new shards of ``shard_size`` are opened as copies of a
trained shard emptied; nothing is retrained, untouched shards are linked, not rewritten. Deleted
products leave at the next full build (``build_catalogue_index``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from thumblab_dagster.lib.engine.build import build_index_dir
from thumblab_dagster.lib.engine.ids import id_array, is_positions
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.publish import DirectoryLayout
from thumblab_dagster.lib.engine.shards import shard_name
from thumblab_dagster.lib.engine.spec import IndexSpec, resolve_spec
from thumblab_dagster.lib.engine.versions import append_rows

SEED_ID_MAP = "ids.json"          # in the index directory; published as id_map_<name>.json
SEED_ID_MAP_NAME = "id_map_{name}.json"
SEED_SHARD_NAME = "{prefix}_{shard}"  # shard: shard_00000.index


def seed_id_map_name(name: str) -> str:
    return SEED_ID_MAP_NAME.format(name=name)


def published_names(name: str, prefix: str, shard_count: int) -> dict[str, str]:
    """Index-directory file -> the seed's file name (``DirectoryLayout.renamed``); others keep theirs."""
    shards = {shard_name(i): SEED_SHARD_NAME.format(prefix=prefix, shard=shard_name(i)) for i in range(shard_count)}
    return {**shards, SEED_ID_MAP: seed_id_map_name(name)}


def publish_layout(name: str, prefix: str, manifest: Manifest, link: bool = False) -> DirectoryLayout:
    """The engine's ``DirectoryLayout`` that publishes ``manifest``'s directory in the seed's names."""
    return DirectoryLayout(renamed=published_names(name, prefix, len(manifest.shards or [])), link=link)


def read_seed_id_map(path: str | os.PathLike) -> np.ndarray:
    """The seed's id map (a JSON list of ids by global position) as a string array."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{Path(path).name} is not valid JSON ({exc}): the id map is a JSON list of ids by "
                         "position; it was cut short or edited") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; the id map is a list of ids by position")
    return id_array([str(x) for x in data])


def build_catalogue_index(target: str | os.PathLike, vectors, ids, *, shard_size: int,
                          spec: IndexSpec | None = None) -> Manifest:
    """A full build: the engine's sharded directory (``spec`` with ``shard_size``) plus ``ids.json``.

    ``ids``: the product ids in the vectors' order, unique strings.
    """
    ids = _product_ids(ids)
    if len(ids) == 0:
        raise ValueError("no products to index: the catalogue's embeddings are empty; embed some products first")
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    spec = resolve_spec(spec, shard_size=shard_size)
    with _staged_id_map(target, ids) as id_map:
        return build_index_dir(target, vectors, ids,
                               resolve_spec(spec, extra_files={**spec.extra_files, SEED_ID_MAP: id_map}))


def append_products(live_loaded, target: str | os.PathLike, vectors, ids, *, shard_size: int,
                    embedding: dict | None, metadata=None, extra: dict | None = None) -> Manifest:
    """Write ``target``: the loaded catalogue index with new products appended, never retrained.

    The open last shard (fewer than ``shard_size`` products) is filled first and rewritten; the
    rest open new shards of ``shard_size``. ``embedding`` describes the new vectors' model: vectors
    from another model than the index's are refused (``VersionMismatchError``), as are ids it
    holds; ``metadata`` is needed when the index keeps metadata. ``live_loaded``: ``load_sharded``
    of the live index directory (or its published copy).
    """
    if not live_loaded.manifest.is_sharded:
        raise ValueError(f"{live_loaded.directory} is not a sharded index: build it with build_catalogue_index")
    new_ids = _product_ids(ids)
    all_ids = np.concatenate([id_array(live_loaded.ids), new_ids])
    with _staged_id_map(target, all_ids) as id_map:
        return append_rows(live_loaded, target, vectors, new_ids, embedding=embedding, metadata=metadata,
                           extra=extra, shard_size=shard_size, extra_files={SEED_ID_MAP: id_map})


def _product_ids(ids) -> np.ndarray:
    if is_positions(ids):
        raise ValueError("the catalogue index needs the product ids (strings), not positions")
    ids = id_array(ids)
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise ValueError(f"{len(ids) - len(unique)} repeated product ids, e.g. {unique[counts > 1][:5].tolist()}: "
                         "each product must appear once")
    return ids


@contextlib.contextmanager
def _staged_id_map(target: str | os.PathLike, ids: np.ndarray) -> Iterator[Path]:
    """``ids.json`` written beside ``target`` (the build moves it in); removed if the build failed."""
    parent = Path(target).parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{Path(target).name}.", suffix=f".{SEED_ID_MAP}", dir=parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(ids.tolist(), fh)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
