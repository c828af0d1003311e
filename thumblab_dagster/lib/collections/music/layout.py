"""Where a music library's files live.

    <music_dir>/...                                   the audio (THUMBLAB_MUSIC_DIR, default <data_root>/music)
    <data_root>/music_pg/                             the embedded Postgres (unless THUMBLAB_MUSIC_DB_URL is set)
    <data_root>/music_libraries/indexes/<library>/    music_index: the engine's index directory (built, or
                                                      appended to by ``add_track``); beside, never inside, the
                                                      default music folder, so a scan never walks it
    <data_root>/music_libraries/stats/<library>.json  the index stats
    <publish_dir>/<library>/                          the published library (engine publish, ``DirectoryLayout``)

Library names are checked (``check_library_name``), so no name can point outside its folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from thumblab_dagster.lib.settings import load_settings

MUSIC = "music"                   # the audio folder under the data root, and the audio pipeline's library
LIBRARIES = "music_libraries"     # index directories and stats, under the data root
PUBLISHED = "faiss_indices"       # under the data root, unless THUMBLAB_PUBLISH_DIR says otherwise
DEFAULT_LIBRARY = "music"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_library_name(name: str) -> str:
    """``name`` when it can name a library's folders, else a one-line ValueError."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"library name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (e.g. music, my_features)")
    return name


def _absolute(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().absolute()


@dataclass(frozen=True)
class MusicLayout:
    root: Path
    music_dir: Path
    published: Path

    @classmethod
    def at(cls, data_root: str | os.PathLike, publish_dir: str | os.PathLike | None = None,
           music_dir: str | os.PathLike | None = None) -> MusicLayout:
        root = _absolute(data_root)
        return cls(root, _absolute(music_dir) if music_dir else root / MUSIC,
                   _absolute(publish_dir) if publish_dir else root / PUBLISHED)

    @classmethod
    def from_env(cls, environ=None, settings=None) -> MusicLayout:
        """THUMBLAB_DATA_ROOT, THUMBLAB_PUBLISH_DIR and THUMBLAB_MUSIC_DIR (``settings``: already loaded)."""
        settings = load_settings(environ) if settings is None else settings
        return cls.at(settings.data_root, settings.publish_dir, settings.music_dir)

    def index_dir(self, library: str) -> Path:
        return self.root / LIBRARIES / "indexes" / check_library_name(library)

    def stats(self, library: str) -> Path:
        return self.root / LIBRARIES / "stats" / f"{check_library_name(library)}.json"

    def library(self, library: str) -> Path:
        """The published library a service loads: ``<publish_dir>/<library>/`` (a link to its current version)."""
        return self.published / check_library_name(library)
