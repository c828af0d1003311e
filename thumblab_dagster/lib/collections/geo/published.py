"""Published viewports as readers open them: resolved once, inside the publish folder, opened once a version.

``<publish_dir>/<viewport_id>`` is a link to the viewport's current version (the engine's
``DirectoryLayout``); it is resolved once per open, so a reader holds one complete version even
when a publish lands meanwhile. The resolved directory must lie inside the publish folder: a link
that points elsewhere is not a published viewport.

Opening does not re-hash the files: the blocking ``id_map_alignment`` verified every checksum
before the set was published, and a published version is never modified (hashing the 2.5 GB of a
10 km viewport would cost seconds on every open). ``PixelStore`` still checks every file's shape
and dtype against metadata.json.

``ViewportCache`` keeps one open store per viewport (memory maps, the scan, the grid's
reprojection) for as long as its version is the published one: a new publish is picked up by the
next call, an in-flight search keeps the version it started with.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from thumblab_dagster.lib.collections.geo.metadata import METADATA_FILE, check_viewport_id
from thumblab_dagster.lib.collections.geo.store import PixelStore
from thumblab_dagster.lib.engine.publish import VERSIONS_DIR, published_directory


class NotPublished(LookupError):
    """Nothing readable as a viewport is published under that id."""


@dataclass(frozen=True, eq=False)
class OpenViewport:
    """A published viewport's store and the version it came from (the version directory's name)."""

    viewport_id: str
    version: str
    store: PixelStore


def published_version(publish_dir: str | os.PathLike, viewport_id: str) -> Path:
    """The version directory ``<publish_dir>/<viewport_id>`` names, resolved once.

    Raises ``ValueError`` for an unsafe id and ``NotPublished`` when nothing with a metadata.json is
    published there, or the link leads outside the publish folder."""
    viewport_id = check_viewport_id(viewport_id)
    directory = published_directory(publish_dir, viewport_id)
    if directory is None or not (directory / METADATA_FILE).is_file():
        raise NotPublished(f"nothing is published as {Path(publish_dir) / viewport_id}")
    if not directory.is_relative_to(Path(os.path.realpath(publish_dir))):
        raise NotPublished(f"{Path(publish_dir) / viewport_id} leads outside {publish_dir}: not a published viewport")
    return directory


def open_published(publish_dir: str | os.PathLike, viewport_id: str) -> OpenViewport:
    """The published viewport's store (checksums not re-hashed: see the module's note)."""
    directory = published_version(publish_dir, viewport_id)
    return OpenViewport(viewport_id, directory.name, PixelStore(directory))


def published_ids(publish_dir: str | os.PathLike) -> list[str]:
    """Ids of the directories under ``publish_dir`` that hold a metadata.json, sorted (other
    collections' files and the versions folder are not viewports)."""
    root = Path(publish_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == VERSIONS_DIR:
            continue
        try:
            check_viewport_id(entry.name)
        except ValueError:
            continue
        if (entry / METADATA_FILE).is_file():
            found.append(entry.name)
    return found


def _identity(directory: Path) -> tuple:
    """What tells versions apart: the resolved path, and the directory's inode and mtime (a folder
    deleted and rebuilt under the same version name is another version)."""
    stat = directory.stat()
    return str(directory), stat.st_ino, stat.st_mtime_ns


class ViewportCache:
    """One open store per published viewport, replaced when ``<publish_dir>/<id>`` points elsewhere."""

    def __init__(self, publish_dir: str | os.PathLike):
        self.publish_dir = Path(publish_dir)
        self._open: dict[str, tuple[tuple, OpenViewport]] = {}
        self._lock = threading.Lock()
        self.loads = self.hits = 0

    def get(self, viewport_id: str) -> OpenViewport:
        """The viewport's current version, opened at most once (``ValueError``, ``NotPublished`` as
        ``published_version``; a broken set raises the store's one-line ``ValueError``)."""
        try:
            directory = published_version(self.publish_dir, viewport_id)
            key = _identity(directory)
        except (NotPublished, FileNotFoundError):
            with self._lock:
                self._open.pop(viewport_id, None)      # unpublished: let its memory maps go
            raise NotPublished(f"nothing is published as {self.publish_dir / viewport_id}") from None
        with self._lock:                               # two first requests open it once
            cached = self._open.get(viewport_id)
            if cached is not None and cached[0] == key:
                self.hits += 1
                return cached[1]
            opened = OpenViewport(viewport_id, directory.name, PixelStore(directory))
            self._open[viewport_id] = (key, opened)
            self.loads += 1
            return opened

    def cached(self) -> dict[str, str]:
        """Viewport id -> the version held open."""
        with self._lock:
            return {vid: entry[1].version for vid, entry in self._open.items()}
