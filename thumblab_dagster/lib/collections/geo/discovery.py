"""Which mosaics are in the folder, and which are new or changed since last time (the sensor's logic).

``discover(folder, cursor)`` looks at every GeoTIFF in the folder (``layout.is_mosaic_file``),
names its viewport (``viewport_id_from``: the file name or a sidecar) and compares it with the
cursor, a JSON-able ``{viewport_id: {"path", "size", "mtime_ns", "fingerprint"}}`` from the
previous look. Cheap checks first: a file whose path, size and mtime are the ones recorded is not
read again; any other is fingerprinted (sha256 of its bytes), and only a fingerprint the cursor
does not hold makes the viewport *changed*. A file modified in the last ``settle_s`` seconds is
left for the next look (it may still be being copied in). Files that cannot be named (a bad
sidecar, an unsafe name) or that name a viewport another file already took are skipped with one
line each; nothing here raises for a file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from thumblab_dagster.lib.collections.geo.layout import is_mosaic_file
from thumblab_dagster.lib.collections.geo.metadata import MOSAIC_SUFFIXES, viewport_id_from
from thumblab_dagster.lib.collections.geo.mosaic import fingerprint as content_fingerprint

SETTLE_S = 10.0


@dataclass
class Discovery:
    mosaics: dict[str, Path] = field(default_factory=dict)    # every viewport found (not still settling) -> its file
    changed: dict[str, str] = field(default_factory=dict)     # new or changed viewports -> their fingerprint
    settling: list[str] = field(default_factory=list)         # files modified too recently, looked at next time
    problems: list[str] = field(default_factory=list)         # files skipped, one line each
    cursor: dict = field(default_factory=dict)                # what the next look compares with


def parse_cursor(text: str | None) -> dict:
    """The cursor a previous look left (an unreadable one counts as none: every mosaic is looked at)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def mosaic_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_mosaic_file(p)) if folder.is_dir() else []


def discover(folder: str | os.PathLike, cursor: dict | None = None, *, settle_s: float = SETTLE_S,
             fingerprint: Callable[[Path], str] = content_fingerprint, now: float | None = None) -> Discovery:
    cursor, found, taken = cursor or {}, Discovery(), {}
    now = time.time() if now is None else now
    for path in mosaic_files(folder):
        try:
            viewport_id = viewport_id_from(path)
            stat = path.stat()
        except (ValueError, OSError) as exc:
            found.problems.append(f"skipped {path.name}: {exc}")
            continue
        if viewport_id in taken:
            found.problems.append(f"skipped {path.name}: viewport {viewport_id} is already "
                                  f"{taken[viewport_id].name}; give one of them another name or sidecar")
            continue
        taken[viewport_id] = path
        before = cursor.get(viewport_id) if isinstance(cursor.get(viewport_id), dict) else None
        if before and (before.get("path"), before.get("size"), before.get("mtime_ns")) == (
                str(path), stat.st_size, stat.st_mtime_ns):
            found.cursor[viewport_id] = before                   # untouched: not read again
            found.mosaics[viewport_id] = path
            continue
        if now - stat.st_mtime < settle_s:
            found.settling.append(path.name)
            if before:
                found.cursor[viewport_id] = before
                found.mosaics[viewport_id] = path
            continue
        try:
            digest = fingerprint(path)
        except OSError as exc:
            found.problems.append(f"skipped {path.name}: cannot read it ({exc})")
            continue
        found.cursor[viewport_id] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                     "fingerprint": digest}
        found.mosaics[viewport_id] = path
        if not before or before.get("fingerprint") != digest:
            found.changed[viewport_id] = digest
    return found


class UnknownViewportError(LookupError):
    """No mosaic in the folder names this viewport."""


def find_mosaic(folder: str | os.PathLike, viewport_id: str) -> Path:
    """The mosaic of ``viewport_id``: ``<folder>/<viewport_id>.tif`` (or another GeoTIFF suffix), else
    the file whose name or sidecar names it."""
    folder = Path(folder)
    for suffix in MOSAIC_SUFFIXES:
        candidate = folder / f"{viewport_id}{suffix}"
        if is_mosaic_file(candidate) and _names(candidate) == viewport_id:
            return candidate
    for path in mosaic_files(folder):
        if _names(path) == viewport_id:
            return path
    raise UnknownViewportError(f"no mosaic for viewport {viewport_id} in {folder}: put {viewport_id}.tif there "
                               "(or run `thumblab geo add MOSAIC.tif --viewport-id ID`)")


def _names(path: Path) -> str | None:
    try:
        return viewport_id_from(path)
    except ValueError:
        return None


def place_mosaic(folder: str | os.PathLike, source: str | os.PathLike, viewport_id: str, copy: bool = False) -> Path:
    """Put ``source`` in the mosaics folder as ``<viewport_id><suffix>`` (a symlink, or a copy renamed in
    whole so the sensor never sees half a file); already there: the path it has. Another file under
    that name is a ``ValueError``."""
    folder, source = Path(folder), Path(source).absolute()
    if source.parent.resolve() == folder.resolve() and _names(source) == viewport_id:
        return source                                                  # already in the folder under its id
    target = folder / f"{viewport_id}{source.suffix if source.suffix in MOSAIC_SUFFIXES else '.tif'}"
    if os.path.lexists(target):
        if target.exists() and os.path.samefile(target, source):
            return target
        raise ValueError(f"{target} already holds another mosaic for viewport {viewport_id}: remove it, or give "
                         "this one another --viewport-id")
    folder.mkdir(parents=True, exist_ok=True)
    if copy:
        staged = folder / f".{target.name}.{os.getpid()}.tmp"             # hidden: the sensor skips it
        try:
            shutil.copyfile(source, staged)
            os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
    else:
        os.symlink(source, target)
    if _names(target) != viewport_id:                                  # a sidecar in the folder names it otherwise
        target.unlink()
        raise ValueError(f"{folder / (viewport_id + '.json')} names another viewport: remove it or pick another id")
    return target
