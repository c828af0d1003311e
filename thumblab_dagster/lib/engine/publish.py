"""Publishing: a verified index directory becomes a name's published copy, changed as one set.

    <root>/.versions/<name>/v000002-<snapshot>/   one complete version: <name>.index, <name>_ids.npy
                                                 (none for position ids), <name>_<file> for every other
                                                 file the manifest covers, <name>_manifest.json; never
                                                 modified once written
    <root>/.versions/<name>/current               symlink -> v000002-<snapshot>, replaced in one step
    <root>/<name>.index, <name>_ids.npy, ...,     the flat copy older readers load: hard links to the
    <root>/<name>_manifest.json                  current version's files, the manifest replaced last

A version is staged in full (fsynced), renamed into place, and only then made ``current``; a
reader that resolves ``current`` once (``load_published``, the query side) loads the complete
previous version or the complete new one, whenever a publish is killed. The flat files are then
replaced one by one: a reader of those may meet a mix between two renames and refuses it by the
manifest's checksums, as before. Each publish of a name first removes what a crashed one left
(staged versions, temp links, versions never made current, older temp files of the flat copy)
and, once the new version is current, every version but it and the previous one (a running
reader may still be loading that). Files are ``mode`` (0644), directories ``dir_mode(mode)``.

A collection whose consumers load one directory per name publishes with ``DirectoryLayout``::

    <root>/.versions/<name>/v000002-<snapshot>/   the index directory's files under their own names
                                                 (``renamed`` where consumers expect another, e.g. the
                                                 index file) and ``manifest.json``
    <root>/.versions/<name>/current               symlink -> v000002-<snapshot>, as above
    <root>/<name>                                 symlink -> .versions/<name>/v000002-<snapshot>, replaced
                                                 in one step after ``current``

There is no flat copy to refresh file by file: a reader that resolves ``<root>/<name>`` once
(``load_published``) sees the complete previous set or the complete new one, never a mix.
A real directory left at ``<root>/<name>`` by an earlier tool is swapped out whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from thumblab_dagster.lib.engine.files import (
    FILE_MODE,
    dir_mode,
    finish_tree,
    fsync_dir,
    fsync_file,
    json_bytes,
    link_or_copy,
    locked,
    remove_tree,
    sha256_file,
    swap_in,
)
from thumblab_dagster.lib.engine.index_dir import (
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    IndexIntegrityError,
    LoadedIndex,
    checksum_problems,
    load_files,
    published_name,
    published_names,
    read_manifest,
)
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.shards import ShardedIndex, load_sharded

VERSIONS_DIR = ".versions"
CURRENT = "current"
_VERSION = re.compile(r"^v(\d{6,})(?:-[A-Za-z0-9._-]*)?$")  # v<sequence>-<snapshot>


@dataclass
class PublishResult:
    published: bool
    reason: str
    paths: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DirectoryLayout:
    """Publish ``<root>/<name>/`` as one directory (see the module's layout) instead of flat files.

    ``renamed``: index-directory file names -> the names the directory's consumers load (the
    manifest keeps ``manifest.json``); every other file keeps its name.
    """

    renamed: Mapping[str, str] = field(default_factory=dict)
    # Hard-link the index directory's files into the version instead of copying them (where the
    # filesystem and the publish mode allow): for sets too large to hold twice. The index directory
    # must then never be edited in place (the engine never does; an edit would show in the
    # published version and fail its checksums at load).
    link: bool = False

    def name_of(self, file: str) -> str:
        return MANIFEST_FILE if file == MANIFEST_FILE else self.renamed.get(file, file)


def _names(name: str, layout: DirectoryLayout | None) -> Callable[[str], str]:
    """How a name's files are called where they are published."""
    return layout.name_of if layout is not None else (lambda file: published_name(name, file))


# --- where a name's versions live ---------------------------------------------------------

def versions_dir(publish_root: str | os.PathLike, name: str) -> Path:
    return Path(publish_root) / VERSIONS_DIR / name


def current_pointer(publish_root: str | os.PathLike, name: str) -> Path:
    """The ``current`` symlink of a name (it may not exist: a root published before versions)."""
    return versions_dir(publish_root, name) / CURRENT


def resolve_current(pointer: str | os.PathLike) -> Path | None:
    """The version directory ``pointer`` names, read once; None when there is none."""
    pointer = Path(pointer)
    try:
        target = os.readlink(pointer)
    except OSError:  # missing, or not a symlink
        return None
    directory = pointer.parent / target
    return directory if _VERSION.match(target) and directory.is_dir() else None


def current_version(publish_root: str | os.PathLike, name: str) -> Path | None:
    return resolve_current(current_pointer(publish_root, name))


def _sequence(path: Path) -> int:
    return int(_VERSION.match(path.name).group(1))


def _versions(store: Path) -> list[Path]:
    return sorted((p for p in store.iterdir() if _VERSION.match(p.name) and not p.is_symlink()), key=_sequence) \
        if store.is_dir() else []


# --- publishing -----------------------------------------------------------------------------

def publish(index_dir: str | os.PathLike, publish_root: str | os.PathLike, name: str,
            snapshot: str, mode: int = FILE_MODE, layout: DirectoryLayout | None = None) -> PublishResult:
    """Make a verified index directory ``name``'s published copy (see the module's layout).

    ``snapshot`` orders builds (the partition date): an older build never replaces a newer
    one. Publishers of one name take turns (an exclusive lock beside the copy), so parallel
    backfill runs cannot interleave their files or let an older snapshot land last.
    ``layout`` None: the flat files; a ``DirectoryLayout``: ``<root>/<name>/``.
    """
    root = Path(publish_root)
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, dir_mode(mode))
    with locked(root / f".{name}.publish.lock", mode):
        return _publish_locked(Path(index_dir), root, name, snapshot, mode, layout)


def snapshot_of(manifest: Manifest) -> str:
    """A build's time as its version's snapshot (``20261130T120000Z``): later builds sort later."""
    built = datetime.fromisoformat(str(manifest.built_at))
    return built.strftime("%Y%m%dT%H%M%SZ")


def _publish_locked(index_dir: Path, root: Path, name: str, snapshot: str, mode: int,
                    layout: DirectoryLayout | None) -> PublishResult:
    manifest = read_manifest(index_dir)
    problems = checksum_problems(index_dir, manifest)
    if problems:
        raise IndexIntegrityError(f"not publishing {index_dir}: {'; '.join(problems)}")
    # Every file the manifest covers travels: re-rank vectors, percentile references, metadata.
    name_of = _names(name, layout)
    renamed = {file: name_of(file) for file in manifest.files}
    clean_leftovers(root, name, also=renamed.values() if layout is None else ())
    if layout is not None:
        _repair_name(root, name)
    newest = published_snapshot(root, name, layout)
    if newest > snapshot:
        return PublishResult(False, f"published copy is from {newest}, newer than {snapshot}")
    store = _make_dirs(root / VERSIONS_DIR, name, mode)
    previous = current_version(root, name)
    version = _stage_version(index_dir, store, name_of(MANIFEST_FILE), snapshot, manifest, renamed, mode,
                             link=layout is not None and layout.link)
    _point_to(store, version.name)
    if layout is not None:
        _point_name(root, store, name, version)
        _prune(store, keep={version.name, previous.name if previous else ""})
        return PublishResult(True, f"published {snapshot}",
                             {"directory": str(root / name), **{file: str(root / name / n) for file, n in
                                                                 renamed.items()},
                              "manifest": str(root / name / MANIFEST_FILE), "version": str(version)})
    _refresh_flat(version, root, store, name, [*renamed.values(), published_name(name, MANIFEST_FILE)], mode)
    _prune(store, keep={version.name, previous.name if previous else ""})
    names = published_names(name)
    return PublishResult(True, f"published {snapshot}",
                         {**{role: str(root / n) for role, n in names.items() if role != "ids" or not manifest.positions},
                          **{file: str(root / n) for file, n in renamed.items()}, "version": str(version)})


def published_manifest(manifest: Manifest, snapshot: str, index_dir: Path, renamed: dict[str, str]) -> Manifest:
    """The copy's manifest: files under their published names, the renaming, where and when from."""
    return manifest.updated(snapshot=snapshot, published_from=str(index_dir),
                            published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            published_names=renamed,
                            files={renamed[file]: entry.model_dump(mode="json") for file, entry in manifest.files.items()})


def published_snapshot(publish_root: str | os.PathLike, name: str, layout: DirectoryLayout | None = None) -> str:
    """The newest snapshot published for ``name``: its current version's or its flat copy's ("" for none
    or a broken manifest, which is replaced)."""
    manifest_name = _names(name, layout)(MANIFEST_FILE)
    current = current_version(publish_root, name)
    flat = [Path(publish_root) / manifest_name] if layout is None else []
    candidates = flat + ([current / manifest_name] if current else [])
    snapshots = [""]
    for path in candidates:
        with contextlib.suppress(OSError, IndexIntegrityError):
            snapshots.append(read_manifest(path).snapshot or "")
    return max(snapshots)


def _make_dirs(parent: Path, name: str, mode: int) -> Path:
    """``parent/name`` and ``parent``, created readable (mkdir alone would follow the umask)."""
    for directory in (parent, parent / name):
        if not directory.is_dir():
            directory.mkdir(exist_ok=True)
            os.chmod(directory, dir_mode(mode))
    return parent / name


def _safe(snapshot: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", snapshot)[:64]


def _place(source: Path, target: Path, mode: int, link: bool) -> None:
    """``source`` in the version: with ``link``, hard-linked where it can be (no second copy on disk),
    copied where it cannot (another filesystem) or where publishing would change its mode (the link
    would change the index directory's file too); without, copied."""
    if link and source.stat().st_mode & 0o7777 == mode:
        link_or_copy(source, target)
        return
    shutil.copyfile(source, target)


def _stage_version(index_dir: Path, store: Path, manifest_name: str, snapshot: str, manifest: Manifest,
                   renamed: dict[str, str], mode: int, link: bool = False) -> Path:
    """Link or copy, verify and fsync a complete version in a staging directory, then rename it into place."""
    sequence = max(map(_sequence, _versions(store)), default=0) + 1
    version = store / f"v{sequence:06d}-{_safe(snapshot)}"
    staged = Path(tempfile.mkdtemp(prefix=f".{version.name}.", suffix=".tmp", dir=store))
    try:
        for file, target in renamed.items():
            _place(index_dir / file, staged / target, mode, link)
            if sha256_file(staged / target) != manifest.files[file].sha256:
                raise IndexIntegrityError(f"copy of {file} to {store} does not match its checksum; "
                                          "the published copy was left as it was")
        copy = published_manifest(manifest, snapshot, index_dir, renamed)
        (staged / manifest_name).write_bytes(json_bytes(copy.to_json()))
        finish_tree(staged, mode)
        os.rename(staged, version)
        fsync_dir(store)
    finally:
        remove_tree(staged)  # gone once renamed; a failed copy otherwise
    return version


def _point_to(store: Path, version: str) -> None:
    """Replace ``current`` with a symlink to ``version`` in one step."""
    link = store / f".{CURRENT}.{os.urandom(4).hex()}.tmp"
    os.symlink(version, link)
    os.replace(link, store / CURRENT)
    fsync_dir(store)


def _point_name(root: Path, store: Path, name: str, version: Path) -> None:
    """Replace ``<root>/<name>`` with a symlink to ``version`` in one step (relative: the root may move)."""
    link = store / f".{name}.{os.urandom(4).hex()}.link.tmp"   # beside the versions: pruned with them
    os.symlink(os.path.join(VERSIONS_DIR, name, version.name), link)
    target = root / name
    if target.is_dir() and not target.is_symlink():   # a real directory from an earlier tool: swapped out whole
        swap_in(link, target)
        remove_tree(link)                               # now the old directory
    else:
        os.replace(link, target)
    fsync_dir(root)


def _repair_name(root: Path, name: str) -> None:
    """Point ``<root>/<name>`` at ``current`` again where a publish was killed between the two links."""
    current = current_version(root, name)
    if current is not None and published_directory(root, name) != Path(os.path.realpath(current)):
        _point_name(root, versions_dir(root, name), name, current)


def published_directory(publish_root: str | os.PathLike, name: str) -> Path | None:
    """The version directory ``<root>/<name>`` names, resolved once (``DirectoryLayout``); None without one."""
    target = Path(publish_root) / name
    if not target.is_dir():
        return None
    return Path(os.path.realpath(target))


def _link_or_copy(source: Path, target: Path, mode: int) -> None:
    """A hard link, or a copy (given ``mode``, fsynced) where the filesystem refuses links."""
    if not link_or_copy(source, target):
        os.chmod(target, mode)
        fsync_file(target)


def _refresh_flat(version: Path, root: Path, store: Path, name: str, files: list[str], mode: int) -> None:
    """Replace the flat files by the version's: data files, the index last among them, the manifest
    after everything (readers of the flat copy key on it)."""
    manifest_name, index_name = published_name(name, MANIFEST_FILE), published_name(name, INDEX_FILE)
    data = sorted((f for f in files if f != manifest_name), key=lambda f: f == index_name)
    for file in [*data, manifest_name]:
        if file == manifest_name:
            fsync_dir(root)
        temp = store / f".flat.{os.urandom(4).hex()}.tmp"  # beside the versions: cleaned with them
        _link_or_copy(version / file, temp, mode)
        os.replace(temp, root / file)
    fsync_dir(root)


def _prune(store: Path, keep: set[str]) -> list[str]:
    """Remove every entry of ``store`` but ``current`` and the versions in ``keep``; the names removed."""
    doomed = sorted(p for p in store.iterdir() if p.name != CURRENT and p.name not in keep) if store.is_dir() else []
    for path in doomed:
        remove_tree(path)
    return [p.name for p in doomed]


def clean_leftovers(publish_root: str | os.PathLike, name: str, also=()) -> list[str]:
    """Remove what crashed publishes of ``name`` left; the names removed.

    Under ``.versions/<name>/``: everything but ``current``, the version it names and the one
    before it (staged versions, temp links, versions never made current). In the root: the temp
    files of earlier releases (``.<published file>.XXXXXXXX.tmp``) of the flat files that the
    flat manifest and ``also`` name.
    """
    root, store = Path(publish_root), versions_dir(publish_root, name)
    current = current_version(root, name)
    keep = set()
    if current is not None:
        keep.add(current.name)
        older = [v for v in _versions(store) if _sequence(v) < _sequence(current)]
        if older:
            keep.add(older[-1].name)
    removed = _prune(store, keep)
    files = {*also, published_name(name, INDEX_FILE), published_name(name, MANIFEST_FILE)}
    with contextlib.suppress(OSError, IndexIntegrityError):
        files |= set(read_manifest(root / published_name(name, MANIFEST_FILE)).files)
    temp = re.compile(rf"^\.(?:{'|'.join(map(re.escape, sorted(files)))})\.[a-z0-9_]{{8}}\.tmp$")
    for path in sorted(p for p in root.iterdir() if temp.match(p.name)):
        remove_tree(path)
        removed.append(path.name)
    return removed


# --- reading ----------------------------------------------------------------------------------

def load_published(publish_root: str | os.PathLike, name: str, verify: bool = True, flat: bool = False,
                   layout: DirectoryLayout | None = None) -> LoadedIndex | ShardedIndex:
    """``name``'s published copy, verified: its current version (resolved once, so never a mix), or the
    flat files where there is no version (a root published by an earlier release) or ``flat``.
    With a ``DirectoryLayout``: the directory ``<root>/<name>`` names, resolved once (a sharded
    index loads as a ``ShardedIndex``)."""
    if layout is not None:
        directory = published_directory(publish_root, name)
        if directory is None:
            raise FileNotFoundError(f"nothing is published as {name} under {publish_root}")
        manifest = read_manifest(directory / MANIFEST_FILE)
        if manifest.is_sharded:  # its manifest's published_names find the renamed shards and id map
            return load_sharded(directory, verify)
        return load_files(directory, layout.name_of(INDEX_FILE), layout.name_of(IDS_FILE), manifest, verify)
    names = published_names(name)
    directory = None if flat else current_version(publish_root, name)
    directory = directory or Path(publish_root)
    return load_files(directory, names["index"], names["ids"], read_manifest(directory / names["manifest"]), verify)
