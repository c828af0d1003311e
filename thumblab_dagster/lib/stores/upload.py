"""Verified copies of an index directory at a destination: Supabase Storage or any fsspec URL.

    <destination>/<niche>/<date>/    every file the manifest covers, then manifest.json
    <destination>/<niche>/latest/    the same files, copied only once the dated copy is complete

Each file is read back and compared by size and sha256. The dated copy is written first: a
failed upload stops before ``latest/`` is touched, so the previous latest copy stays intact,
and within ``latest/`` the manifest goes last, so a reader that checks it sees old or new.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from thumblab_dagster.lib.engine.files import sha256_file
from thumblab_dagster.lib.engine.index_dir import MANIFEST_FILE, IndexIntegrityError, checksum_problems, read_manifest

SUPABASE_SCHEME = "supabase"


class UploadError(RuntimeError):
    """A file did not arrive whole; ``str()`` names it (never a secret)."""


class Destination(Protocol):
    description: str  # shown in logs and metadata: no credentials

    def put(self, local: Path, path: str) -> None:
        """Upload ``local`` to ``path`` (relative to the destination) and verify it, or raise UploadError."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FsspecDestination:
    """Any fsspec filesystem: ``file://``, ``s3://`` (s3fs), ``gs://`` (gcsfs), ``memory://``..."""

    def __init__(self, url: str):
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise ValueError(f"cannot write to {urlsplit(url).scheme}:// URLs: {exc} (install the fsspec "
                             "backend it names, e.g. s3fs or gcsfs)") from None
        parts = urlsplit(url)
        self.description = f"{parts.scheme or 'file'}://{parts.hostname or ''}{parts.path}"

    def put(self, local: Path, path: str) -> None:
        remote = f"{self.root.rstrip('/')}/{path}"
        try:
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local), remote)
            size = self.fs.size(remote)
            with self.fs.open(remote, "rb") as fh:
                digest = _sha256_bytes(fh.read())
        except (OSError, ValueError) as exc:
            raise UploadError(f"uploading {path} to {self.description} failed ({type(exc).__name__}: {exc})") from None
        if size != local.stat().st_size or digest != sha256_file(local):
            raise UploadError(f"{path} at {self.description} does not match the local file "
                              f"({size} bytes vs {local.stat().st_size}, or its sha256 differs)")


class SupabaseStorageDestination:
    """``supabase://<bucket>/<prefix>``: Supabase Storage through the REST gateway."""

    def __init__(self, url: str, store):
        parts = urlsplit(url)
        self.bucket, self.prefix = parts.hostname or "", parts.path.strip("/")
        if not self.bucket:
            raise ValueError(f"{url!r} names no bucket: use supabase://<bucket>/<prefix>")
        self.store = store
        self.description = f"supabase://{self.bucket}/{self.prefix}"

    def put(self, local: Path, path: str) -> None:
        target = f"{self.prefix}/{path}" if self.prefix else path
        try:
            self.store.upload_file(self.bucket, target, local)  # uploads, reads back, compares size + sha256
        except Exception as exc:  # the store's errors carry no secrets; name the file
            raise UploadError(f"uploading {path} to {self.description} failed: {exc}") from None


def destination_for(url: str, supabase=None) -> Destination:
    """A destination from a URL; ``supabase`` (SupabaseSettings) is needed for supabase:// URLs."""
    if urlsplit(url).scheme == SUPABASE_SCHEME:
        if supabase is None or not (supabase.url and supabase.key):
            raise ValueError("supabase:// upload URLs need SUPABASE_URL and SUPABASE_KEY (Storage goes through "
                             "the REST gateway)")
        from thumblab_dagster.lib.stores.supabase_rest import RestStore

        return SupabaseStorageDestination(url, RestStore(supabase.url, supabase.key))
    return FsspecDestination(url)


@dataclass
class UploadResult:
    destination: str
    dated: str
    latest: str
    files: list[str] = field(default_factory=list)
    bytes: int = 0


def upload_index_dir(index_dir: str | os.PathLike, destination: Destination, niche: str, date: str,
                     log=None) -> UploadResult:
    """Copy a verified index directory to ``<niche>/<date>/`` and then ``<niche>/latest/``."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    problems = checksum_problems(index_dir, manifest)
    if problems:
        raise IndexIntegrityError(f"not uploading {index_dir}: {'; '.join(problems)}")
    names = sorted(manifest["files"]) + [MANIFEST_FILE]  # the manifest last: it vouches for the rest
    total = sum((index_dir / n).stat().st_size for n in names)
    for folder in (date, "latest"):
        for name in names:
            destination.put(index_dir / name, f"{niche}/{folder}/{name}")
        if log:
            log.info(f"uploaded {len(names)} files ({total:,} bytes) to {destination.description}/{niche}/{folder}/")
    return UploadResult(destination.description, f"{destination.description}/{niche}/{date}/",
                        f"{destination.description}/{niche}/latest/", names, total)
