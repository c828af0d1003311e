"""Atomic file writes and directory swaps, checksums and modes: nothing we publish is ever half-written.

Written files are ``FILE_MODE`` (0644) and directories ``dir_mode(FILE_MODE)`` (0755) unless a
caller asks for another mode, so a service running as another user can read them (``mkstemp``
alone gives 0600).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o644


def dir_mode(file_mode: int) -> int:
    """A directory's mode for files of ``file_mode``: searchable where readable, always the owner's."""
    return file_mode | ((file_mode & 0o444) >> 2) | 0o700


def fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def finish_tree(directory: Path, file_mode: int = FILE_MODE) -> None:
    """Give every file under ``directory`` ``file_mode`` and every directory its ``dir_mode``, and fsync
    them, so the tree is readable and on disk before it is swapped in."""
    for parent, dirs, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(parent, name), file_mode)
            fsync_file(os.path.join(parent, name))
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode(file_mode))
        fsync_dir(Path(parent))
    os.chmod(directory, dir_mode(file_mode))


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[None]:
    """An exclusive lock on ``lock_file`` (created with ``mode``, never removed: removing lock files races)."""
    with open(lock_file, "a+b") as lock:
        with contextlib.suppress(OSError):  # another user's lock file keeps its mode
            os.fchmod(lock.fileno(), mode)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target`` in one step, with ``mode``.

    On any exception the temp file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes, mode: int = FILE_MODE) -> Path:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def json_bytes(obj) -> bytes:
    """JSON as every manifest is written: indented, keys sorted, one final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(target: str | os.PathLike, obj, mode: int = FILE_MODE) -> Path:
    return write_bytes_atomic(target, json_bytes(obj), mode)


# --- directories: swapped in one step, never missing -----------------------------------------

_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2  # Linux renameat2 flag; macOS renamex_np flag


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one step; False where the system or filesystem cannot.

    Linux ``renameat2(RENAME_EXCHANGE)`` (ext4, xfs, btrfs, tmpfs, overlayfs) or macOS
    ``renamex_np(RENAME_SWAP)``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        call = libc.renameat2
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        call = libc.renamex_np
        call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = call(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), str(b))


def _leftovers_pattern(name: str) -> re.Pattern:
    """A crashed swap's staging dir (``.<name>.XXXXXXXX.tmp``, mkdtemp's 8 characters) or a moved-aside
    old dir (``.<name>.old-<pid>-<hex>``), of this target only (``a`` never matches ``a.b``'s)."""
    return re.compile(rf"^\.{re.escape(name)}\.(?:[a-z0-9_]{{8}}\.tmp|old-\d+-[0-9a-f]{{6}})$")


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a file, link or directory tree; what is already gone is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _abandoned(path: Path) -> bool:
    """Whether no live builder holds ``path`` (``_staging`` locks its directory for its lifetime; the
    kernel drops the lock when the process dies, kill -9 included). Where locks are not supported,
    assume it was abandoned."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def clean_dir_leftovers(target: str | os.PathLike) -> list[str]:
    """Remove what crashed swaps of ``target`` left beside it (not a live builder's); the names removed.

    Where a swap without ``exchange`` was killed between its renames, ``target`` is missing and
    its old directory is moved aside: that one is put back first.
    """
    target = Path(target)
    pattern = _leftovers_pattern(target.name)
    doomed = sorted(p for p in target.parent.iterdir() if pattern.match(p.name) and _abandoned(p)) \
        if target.parent.is_dir() else []
    aside = sorted((p for p in doomed if ".old-" in p.name), key=lambda p: p.stat().st_mtime_ns)
    if aside and not os.path.lexists(target):
        os.rename(aside[-1], target)
        doomed.remove(aside[-1])
    for path in doomed:
        remove_tree(path)
    return [p.name for p in doomed]


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A new empty directory beside ``target``, locked (``_abandoned``) until the context ends."""
    while True:
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        fd = os.open(staged, os.O_RDONLY)
        with contextlib.suppress(OSError):  # no locks here: nothing to hold
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            if os.stat(staged).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # another builder's cleanup took it between mkdtemp and the lock: take another
    try:
        yield staged
    finally:
        os.close(fd)


def swap_in(staged: Path, target: Path) -> None:
    """Put the complete directory ``staged`` at ``target`` in one step; the old one ends up at ``staged``.

    Nothing there: one rename. Something there: an atomic exchange, so a reader always finds a
    complete directory at ``target``. Where the filesystem cannot exchange, the old directory is
    moved aside first (``target`` is briefly missing) and a warning says so.
    """
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    if exchange(staged, target):
        return
    log.warning("%s cannot swap directories in one step: %s is briefly missing while it is replaced",
                target.parent, target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{os.urandom(3).hex()}")
    os.replace(target, old)
    os.replace(staged, target)
    os.replace(old, staged)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on success it takes ``target``'s place in one step.

    A failed build never leaves a half-filled directory under the final name, and a replaced
    ``target`` is never missing: the complete old directory stays there until the new one is
    swapped in (``swap_in``), then it is deleted. Each build first removes what crashed builds of
    ``target`` left (``.<name>.*.tmp``, ``.<name>.old-*``), never a live one's (each holds a lock
    on its staging directory). Files get ``mode``, directories ``dir_mode(mode)``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_dir_leftovers(target)
    with _staging(target) as staged:
        try:
            yield staged
            finish_tree(staged, mode)
            swap_in(staged, target)
            fsync_dir(target.parent)
        finally:
            remove_tree(staged)  # the failed build, or the replaced directory


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> bool:
    """A hard link of ``source`` at ``target`` (no second copy on disk), or a copy where the filesystem
    refuses links. Only for files nobody edits in place. True when it linked."""
    try:
        os.link(source, target)
        return True
    except OSError:  # another filesystem, or links not allowed here
        shutil.copyfile(source, target)
        return False
