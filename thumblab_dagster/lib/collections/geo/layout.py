"""Where a viewport's files live: the mosaics folder, the data root's geo/ tree and the published copy.

    <mosaic_dir>/<viewport_id>.tif                      the mosaics (THUMBLAB_MOSAIC_DIR, default <data_root>/mosaics)
    <data_root>/geo/stores/<viewport_id>/               pixel_store: all_embeddings.npy, nodata_mask.npy, norms.npy,
                                                        metadata.json
    <data_root>/geo/indexes/<viewport_id>/              pixel_index: the engine's index directory, the store's
                                                        files beside it (hard links) and the manifest covering all
    <data_root>/geo/previews/<viewport_id>/             viewport_preview: preview.tif (COG), preview.png
    <data_root>/geo/stats/<viewport_id>.json            the index stats
    <publish_dir>/<viewport_id>/                        the published set (engine publish, ``DirectoryLayout``)

The data root and the publish folder are the thumbnails' own (``THUMBLAB_DATA_ROOT``,
``THUMBLAB_PUBLISH_DIR``, default ``<data_root>/faiss_indices``). Every path is built from a
checked viewport id (``check_viewport_id``), so no id can point outside its folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from thumblab_dagster.lib.collections.geo.metadata import MOSAIC_SUFFIXES, check_viewport_id
from thumblab_dagster.lib.settings import load_settings

MOSAICS = "mosaics"               # under the data root, unless THUMBLAB_MOSAIC_DIR says otherwise
PUBLISHED = "faiss_indices"       # under the data root, unless THUMBLAB_PUBLISH_DIR says otherwise (as thumbnails)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().absolute()


@dataclass(frozen=True)
class GeoLayout:
    root: Path
    mosaic_dir: Path
    published: Path

    @classmethod
    def at(cls, data_root: str | os.PathLike, publish_dir: str | os.PathLike | None = None,
           mosaic_dir: str | os.PathLike | None = None) -> GeoLayout:
        root = _absolute(data_root)
        return cls(root, _absolute(mosaic_dir) if mosaic_dir else root / MOSAICS,
                   _absolute(publish_dir) if publish_dir else root / PUBLISHED)

    @classmethod
    def from_env(cls, environ=None, settings=None) -> GeoLayout:
        """THUMBLAB_DATA_ROOT, THUMBLAB_PUBLISH_DIR and THUMBLAB_MOSAIC_DIR (``settings``: already loaded)."""
        settings = load_settings(environ) if settings is None else settings
        return cls.at(settings.data_root, settings.publish_dir, settings.mosaic_dir)

    def store_dir(self, viewport_id: str) -> Path:
        return self.root / "geo" / "stores" / check_viewport_id(viewport_id)

    def index_dir(self, viewport_id: str) -> Path:
        return self.root / "geo" / "indexes" / check_viewport_id(viewport_id)

    def preview_dir(self, viewport_id: str) -> Path:
        return self.root / "geo" / "previews" / check_viewport_id(viewport_id)

    def stats(self, viewport_id: str) -> Path:
        return self.root / "geo" / "stats" / f"{check_viewport_id(viewport_id)}.json"

    def viewport(self, viewport_id: str) -> Path:
        """The published set a service loads: ``<publish_dir>/<viewport_id>/`` (a link to its current version)."""
        return self.published / check_viewport_id(viewport_id)

    def mosaic_link(self, viewport_id: str, suffix: str = ".tif") -> Path:
        """Where ``thumblab geo add`` puts a mosaic: named by its viewport id, so the id needs no sidecar."""
        return self.mosaic_dir / f"{check_viewport_id(viewport_id)}{suffix}"


def is_mosaic_file(path: Path) -> bool:
    """A GeoTIFF the folder offers: a known suffix, not hidden (temp copies are), a file or a link to one."""
    return path.suffix in MOSAIC_SUFFIXES and not path.name.startswith(".") and path.is_file()
