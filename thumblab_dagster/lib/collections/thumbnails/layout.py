"""Where every file lives under the data root (see DESIGN.md, "Data flow and files")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from thumblab_dagster.lib.settings import SETTING, load_settings

DEFAULT_DATA_ROOT = SETTING["data_root"].default  # declared in lib/settings.py


@dataclass(frozen=True)
class DataLayout:
    root: Path
    publish_root: Path | None = None

    @classmethod
    def at(cls, root: str | os.PathLike, publish_root: str | os.PathLike | None = None):
        return cls(Path(root).expanduser().absolute(),
                   Path(publish_root).expanduser().absolute() if publish_root else None)

    @classmethod
    def from_env(cls, environ=None, settings=None):
        """THUMBLAB_DATA_ROOT and THUMBLAB_PUBLISH_DIR, as the pipeline's storage resource reads them.

        ``settings``: values already loaded (``load_settings``), so a caller parses the environment once.
        """
        settings = load_settings(environ) if settings is None else settings
        return cls.at(settings.data_root, settings.publish_dir)

    def trending(self, niche: str, date: str) -> Path:
        return self.root / "trending" / niche / f"{date}.parquet"

    def embeddings(self, niche: str, date: str) -> Path:
        return self.root / "embeddings" / niche / f"{date}.parquet"

    def index_dir(self, niche: str, date: str) -> Path:
        return self.root / "indexes" / niche / date

    def stats(self, niche: str, date: str) -> Path:
        return self.root / "stats" / niche / f"{date}.json"

    @property
    def published(self) -> Path:
        """The directory the scoring service loads: ``<niche>.index`` + ``<niche>_ids.npy``."""
        return self.publish_root or (self.root / "faiss_indices")
