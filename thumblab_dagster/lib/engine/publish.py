"""Publishing: a verified index directory copied to the flat layout a service loads.

``<root>/<name>.index`` + ``<name>_ids.npy`` (none for position ids) + ``<name>_<file>`` for
every other file the manifest covers, and ``<name>_manifest.json`` written last (readers key
on it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from thumblab_dagster.lib.engine.files import sha256_file, write_json_atomic
from thumblab_dagster.lib.engine.index_dir import (
    INDEX_FILE,
    IndexIntegrityError,
    LoadedIndex,
    checksum_problems,
    load_files,
    published_name,
    published_names,
    read_manifest,
)
from thumblab_dagster.lib.engine.manifest import Manifest


@dataclass
class PublishResult:
    published: bool
    reason: str
    paths: dict = field(default_factory=dict)


def publish(index_dir: str | os.PathLike, publish_root: str | os.PathLike, name: str,
            snapshot: str) -> PublishResult:
    """Copy a verified index directory to ``<root>/<name>.index`` + ``<name>_ids.npy`` (+ sidecars).

    ``snapshot`` orders builds (the partition date): an older build never replaces a newer
    one. Publishers of one name take turns (an exclusive lock beside the copy), so parallel
    backfill runs cannot interleave their files or let an older snapshot land last.
    """
    root = Path(publish_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.publish.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _publish_locked(index_dir, root, name, snapshot)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish_locked(index_dir: str | os.PathLike, publish_root: str | os.PathLike, name: str,
                    snapshot: str) -> PublishResult:
    """Copy a verified index directory to ``<root>/<name>.index`` + ``<name>_ids.npy``.

    ``snapshot`` orders builds (the partition date): an older build never replaces a newer
    one. The new files are written in full beside the old ones, then swapped in by
    ``os.replace``; the manifest goes last so a reader that checks it never accepts a mix.
    """
    index_dir, root = Path(index_dir), Path(publish_root)
    manifest = read_manifest(index_dir)
    problems = checksum_problems(index_dir, manifest)
    if problems:
        raise IndexIntegrityError(f"not publishing {index_dir}: {'; '.join(problems)}")
    names = published_names(name)
    root.mkdir(parents=True, exist_ok=True)
    current = root / names["manifest"]
    if current.exists():
        try:
            current_snapshot = read_manifest(current).snapshot or ""
        except IndexIntegrityError:
            current_snapshot = ""  # a broken published manifest is replaced
        if current_snapshot > snapshot:
            return PublishResult(False, f"published copy is from {current_snapshot}, newer than {snapshot}")
    # Every file the manifest covers travels: re-rank vectors, percentile references, metadata.
    renamed = {file: published_name(name, file) for file in manifest.files}
    staged = {}
    try:
        for file, target in renamed.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=root)
            os.close(fd)
            shutil.copyfile(index_dir / file, tmp)
            staged[file] = Path(tmp)
        pub_manifest = published_manifest(manifest, snapshot, index_dir, renamed)
        for file, tmp in staged.items():
            if sha256_file(tmp) != manifest.files[file].sha256:
                raise IndexIntegrityError(f"copy of {file} to {root} does not match its checksum; "
                                          "the published copy was left as it was")
        # the index last among the data files, the manifest after everything: readers key on it
        for file in sorted(staged, key=lambda f: f == INDEX_FILE):
            os.replace(staged.pop(file), root / renamed[file])
        write_json_atomic(current, pub_manifest.to_json())
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return PublishResult(True, f"published {snapshot}",
                         {**{role: str(root / n) for role, n in names.items() if role != "ids" or not manifest.positions},
                          **{file: str(root / n) for file, n in renamed.items()}})


def published_manifest(manifest: Manifest, snapshot: str, index_dir: Path, renamed: dict[str, str]) -> Manifest:
    """The copy's manifest: files under their published names, the renaming, where and when from."""
    return manifest.updated(snapshot=snapshot, published_from=str(index_dir),
                            published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            published_names=renamed,
                            files={renamed[file]: entry.model_dump(mode="json") for file, entry in manifest.files.items()})


def load_published(publish_root: str | os.PathLike, name: str, verify: bool = True) -> LoadedIndex:
    names = published_names(name)
    root = Path(publish_root)
    return load_files(root, names["index"], names["ids"], read_manifest(root / names["manifest"]), verify)

