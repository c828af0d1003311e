"""The music folder: which audio files are there, what they hold, and user paths kept inside it.

- ``scan_folder`` walks the folder (wav/flac/mp3/ogg, any case) and returns one ``ScannedFile`` a file:
  a stable id from its relative path, a sha256 of its bytes (a change is a change of content, not of
  mtime), and its tags (mutagen; an untagged file is titled by its file name).
- ``diff`` compares a scan with the store's rows: new, changed, unchanged, deleted.
- ``resolve_inside`` turns a user's path (HTTP, CLI) into a file inside the folder, or refuses it
  without ever reading, opening or even stat-ing anything outside.

Symlinks: a linked file is scanned when its target lies inside the folder; linked folders are not
followed (loops, escapes). Hidden files (``.name``, e.g. macOS ``._x.mp3`` resource forks) are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Protocol

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
HASH_CHUNK_BYTES = 1024 * 1024
MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit


class PathOutsideError(ValueError):
    """A user path that is not a file inside the music folder (``..``, elsewhere, a symlink escape)."""


class TrackNotFoundError(FileNotFoundError):
    """A path inside the music folder where no file is."""


@dataclass(frozen=True)
class ScannedFile:
    file_id: str
    path: str  # relative to the music folder, posix separators
    content_hash: str  # sha256 hex of the bytes
    size_bytes: int
    mtime: float
    title: str | None
    artist: str | None
    album: str | None
    duration_seconds: float | None


class KnownFile(Protocol):
    """What ``diff`` reads of a stored row (``store.FileRow`` is one)."""

    file_id: str
    content_hash: str
    status: str


@dataclass
class ScanDiff:
    """File ids by what happened since the store last saw the folder (each list sorted)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # content hash differs
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.new or self.changed or self.deleted)

    def summary(self) -> dict[str, int]:
        return {"new": len(self.new), "changed": len(self.changed), "unchanged": len(self.unchanged),
                "deleted": len(self.deleted)}


def file_id_for(relative_path: str) -> str:
    """A file's stable id: the first 16 hex digits of sha1 of its relative posix path."""
    return hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _music_root(music_dir: str | Path) -> Path:
    root = Path(music_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"music folder {str(music_dir)!r} does not exist or is not a folder; "
                                f"create it or set THUMBLAB_MUSIC_DIR")
    return root.resolve()


def _inside(path: PurePath, root: PurePath) -> bool:
    return path == root or root in path.parents


def audio_files(music_dir: str | Path) -> list[Path]:
    """The folder's audio files (absolute, sorted by relative path)."""
    root = _music_root(music_dir)
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith(".") or not name.lower().endswith(AUDIO_SUFFIXES):
                continue
            path = Path(folder, name)
            if path.is_symlink() and not _link_inside(path, root):
                log.warning("skipped %s: a symlink whose target is missing or outside the music folder",
                            path.relative_to(root).as_posix())
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _link_inside(path: Path, root: Path) -> bool:
    try:
        return resolve_inside(root, path.relative_to(root)).is_file()
    except (PathOutsideError, FileNotFoundError):
        return False


def folder_signature(music_dir: str | Path) -> str:
    """A cheap fingerprint of the folder (relative path, size, mtime of each audio file) for a sensor's
    cursor: it changes when a file is added, removed, touched or rewritten, without reading any content."""
    root = _music_root(music_dir)
    digest = hashlib.sha256()
    for path in audio_files(root):
        info = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def scan_folder(music_dir: str | Path) -> list[ScannedFile]:
    """Every audio file in the folder with its id, content hash and tags, sorted by relative path.

    A file that vanishes or cannot be read while scanning is skipped with a warning (the next scan sees
    it again); unreadable tags are not an error (the analysis reports undecodable audio).
    """
    root = _music_root(music_dir)
    scanned = []
    for path in audio_files(root):
        relative = path.relative_to(root).as_posix()
        try:
            info = path.stat()
            digest = content_hash(path)
        except OSError as exc:
            log.warning("skipped %s: cannot read it (%s)", relative, exc.strerror or type(exc).__name__)
            continue
        tags = read_tags(path)
        scanned.append(ScannedFile(
            file_id=file_id_for(relative), path=relative, content_hash=digest, size_bytes=info.st_size,
            mtime=info.st_mtime, title=tags["title"] or path.stem, artist=tags["artist"], album=tags["album"],
            duration_seconds=tags["duration_seconds"]))
    return scanned


_ID3_FRAMES = {"title": "TIT2", "artist": "TPE1", "album": "TALB"}


def read_tags(path: Path) -> dict[str, Any]:
    """``title``, ``artist``, ``album`` (None when untagged) and ``duration_seconds`` (None when unknown)."""
    import mutagen

    tags: dict[str, Any] = {"title": None, "artist": None, "album": None, "duration_seconds": None}
    try:
        audio = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError) as exc:
        log.warning("%s: tags unreadable (%s)", path.name, exc)
        return tags
    if audio is None:
        return tags
    length = getattr(getattr(audio, "info", None), "length", None)
    if length and length > 0:
        tags["duration_seconds"] = float(length)
    found = audio.tags
    if found is None:
        return tags
    for name, frame in _ID3_FRAMES.items():
        # easy tags (mp3, Vorbis comments) are lists by name; a WAV's ID3 chunk has frames
        values = found.getall(frame) if hasattr(found, "getall") else found.get(name)
        if values and hasattr(values[0], "text"):
            values = values[0].text
        text = str(values[0]).strip() if values else ""
        tags[name] = text or None
    return tags


def diff(scanned: Iterable[ScannedFile], known_rows: Iterable[KnownFile]) -> ScanDiff:
    """What changed between a scan and the stored rows. A deleted row that is scanned again is new."""
    known = {row.file_id: row for row in known_rows if row.status != "deleted"}
    result = ScanDiff()
    seen = set()
    for file in scanned:
        seen.add(file.file_id)
        before = known.get(file.file_id)
        if before is None:
            result.new.append(file.file_id)
        elif before.content_hash != file.content_hash:
            result.changed.append(file.file_id)
        else:
            result.unchanged.append(file.file_id)
    result.deleted = [file_id for file_id in known if file_id not in seen]
    for ids in (result.new, result.changed, result.unchanged, result.deleted):
        ids.sort()
    return result


def resolve_inside(music_dir: str | Path, user_path: str | Path) -> Path:
    """The real path of the file ``user_path`` names inside the music folder.

    ``user_path`` is relative to the folder or absolute inside it. Refused with ``PathOutsideError``:
    any ``..`` part, an absolute path elsewhere, a symlink (at any depth) whose target leaves the folder.
    Symlinks are followed by hand, checking each target before it is touched, so nothing outside the
    folder is ever opened or stat-ed. No file there: ``TrackNotFoundError``.
    """
    text = str(user_path)
    shown = text if len(text) <= 200 else text[:200] + "..."
    outside = PathOutsideError(f"{shown!r}: not inside the music folder; give a path relative to the music "
                               f"folder, without '..'")
    if not text.strip() or "\0" in text:
        raise PathOutsideError(f"{shown!r}: not a file path; give a path relative to the music folder")
    path = PurePath(text)
    if ".." in path.parts:   # refused by its shape, whether or not the folder exists yet
        raise outside
    if path.is_absolute():
        relative = _relative_to_any(path, (Path(os.path.abspath(music_dir)), Path(os.path.realpath(music_dir))))
        if relative is None:
            raise outside
        path = relative
    root = _music_root(music_dir)
    real = _follow(root, list(path.parts), outside, shown)
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise TrackNotFoundError(f"{shown!r}: not a file in the music folder; give an audio file's path")
    return real


def _relative_to_any(path: PurePath, roots: Iterable[Path]) -> PurePath | None:
    for root in roots:
        if _inside(path, root):
            return path.relative_to(root)
    return None


def _follow(root: Path, parts: list[str], outside: PathOutsideError, shown: str) -> Path:
    """Walk ``parts`` from ``root`` resolving symlinks one at a time; every step is checked to stay
    inside ``root`` (lexically, on a path already free of links) before it is looked at."""
    current, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        step = current.parent if part == ".." else current / part  # ".." only arrives from a link's target
        if not _inside(step, root):
            raise outside
        if part == "..":
            current = step
            continue
        try:
            mode = os.lstat(step).st_mode
        except FileNotFoundError:
            raise TrackNotFoundError(f"{shown!r}: no such file in the music folder; check the path "
                                     f"(relative to the music folder)") from None
        except NotADirectoryError:
            raise TrackNotFoundError(f"{shown!r}: no such file in the music folder ({current.name} is a file)") \
                from None
        if not stat.S_ISLNK(mode):
            current = step
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise PathOutsideError(f"{shown!r}: too many symlinks; give the file's own path")
        target = PurePath(os.readlink(step))
        if target.is_absolute():
            if not _inside(target, root):  # targets spelled through another link to the folder are refused too
                raise outside
            current, parts = root, [*target.relative_to(root).parts, *parts]
        else:
            parts = [*target.parts, *parts]
    return current
