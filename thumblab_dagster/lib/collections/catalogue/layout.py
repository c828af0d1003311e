"""Where a catalogue's files live.

    <data_root>/catalogue/<name>/products.parquet     catalogue_products: the metadata snapshot
    <data_root>/catalogue/<name>/embeddings.parquet   product_embeddings: one CLIP vector a product
    <data_root>/catalogue/<name>/source.json          where the catalogue's products come from (set by
                                                      ``thumblab catalogue build --source``)
    <data_root>/catalogue/<name>/index/               catalogue_index: the engine's sharded index directory
    <data_root>/catalogue/<name>/stats.json           the index stats
    <publish_dir>/<name>/                             the published set in the seed's names
                                                      (``clip_<name>_shard_00000.index``, ``id_map_<name>.json``)

Names are checked (``check_catalogue_name``), so no name can point outside its folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from thumblab_dagster.lib.settings import load_settings

CATALOGUE = "catalogue"
PUBLISHED = "faiss_indices"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_catalogue_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"catalogue name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or "
                         "digit (e.g. color, shoes_2026)")
    return name


def shard_prefix(name: str) -> str:
    """The seed's shard file prefix: ``clip_color`` for the catalogue ``color``."""
    return f"clip_{check_catalogue_name(name)}"


@dataclass(frozen=True)
class CatalogueLayout:
    root: Path
    published: Path

    @classmethod
    def at(cls, data_root: str | os.PathLike, publish_dir: str | os.PathLike | None = None) -> CatalogueLayout:
        root = Path(data_root).expanduser().absolute()
        return cls(root, Path(publish_dir).expanduser().absolute() if publish_dir else root / PUBLISHED)

    @classmethod
    def from_env(cls, environ=None, settings=None) -> CatalogueLayout:
        settings = load_settings(environ) if settings is None else settings
        return cls.at(settings.data_root, settings.publish_dir)

    def folder(self, name: str) -> Path:
        return self.root / CATALOGUE / check_catalogue_name(name)

    def products(self, name: str) -> Path:
        return self.folder(name) / "products.parquet"

    def embeddings(self, name: str) -> Path:
        return self.folder(name) / "embeddings.parquet"

    def source(self, name: str) -> Path:
        return self.folder(name) / "source.json"

    def index_dir(self, name: str) -> Path:
        return self.folder(name) / "index"

    def stats(self, name: str) -> Path:
        return self.folder(name) / "stats.json"

    def catalogue(self, name: str) -> Path:
        """The published set: ``<publish_dir>/<name>/`` (a link to its current version)."""
        return self.published / check_catalogue_name(name)
