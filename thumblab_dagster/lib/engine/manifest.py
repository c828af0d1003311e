"""The manifest: one typed model every writer fills and every reader validates.

``manifest.json`` (``<name>_manifest.json`` when published) describes an index directory:
format version, factory, metric, dim, ntotal, the sha256 and size of every file, how ids are
kept (``ids.npy`` strings or implicit positions), the embedding (opaque to the engine), source
partitions, build and tuning figures, and where a copy was published. A collection may add
fields of its own (they are kept and written back as they are).

Readers call ``read_manifest``/``parse_manifest``: anything malformed (not JSON, another
format version, a missing field, a wrong type, an empty ``files`` table) is refused with an
``IndexIntegrityError`` that names the file and the field. Code written against the old dict
keeps working: ``manifest.get(key, default)`` and ``manifest[key]`` read typed fields and
extras alike, and ``model_dump(mode="json")`` is the JSON on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
ID_MAP_FILE = "id_map.json"
MANIFEST_FILE = "manifest.json"
SHARDED = "sharded"
STRING_IDS = "strings"        # ids.npy: row i <-> ids[i], fixed-width unicode
POSITION_IDS = "positions"    # no file: row i is id i
MAX_ERRORS_SHOWN = 3

Count = Annotated[int, Field(ge=0, strict=True)]      # strict: "10", 10.0 and true are not counts
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class IndexIntegrityError(RuntimeError):
    """An index directory or published copy does not match its manifest."""


class Entry(BaseModel):
    """A manifest block: typed fields, extras allowed, and the read access of the dict it was.

    A typed field left at ``None`` is absent: ``get`` returns the default, ``[]`` raises
    ``KeyError`` and the JSON omits it, as the dicts written before this model did.
    """

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler):
        data = handler(self)
        fields = type(self).model_fields
        return {key: value for key, value in data.items() if value is not None or key not in fields}

    def _extras(self) -> dict:
        return self.__pydantic_extra__ or {}

    def get(self, key: str, default=None):
        if key in type(self).model_fields:
            value = getattr(self, key)
            return default if value is None else value
        return self._extras().get(key, default)

    def __getitem__(self, key: str):
        if key in type(self).model_fields:
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        try:
            return self._extras()[key]
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.keys()

    def keys(self) -> list[str]:
        typed = [key for key in type(self).model_fields if getattr(self, key) is not None]
        return typed + list(self._extras())

    def items(self) -> list[tuple[str, Any]]:
        return [(key, self[key]) for key in self.keys()]

    def values(self) -> list:
        return [self[key] for key in self.keys()]


class FileEntry(Entry):
    sha256: Sha256
    bytes: Count


class IdsEntry(Entry):
    """How row positions map to ids: ``strings`` (a file) or implicit ``positions`` (none)."""

    kind: Literal["strings", "positions"]
    file: str | None = None

    @model_validator(mode="after")
    def _file_fits_kind(self) -> IdsEntry:
        if self.kind == STRING_IDS and not self.file:
            raise ValueError("string ids need the file that holds them (e.g. ids.npy)")
        if self.kind == POSITION_IDS and self.file:
            raise ValueError("position ids (row i is id i) have no file")
        return self


class ShardEntry(Entry):
    file: str
    offset: Count
    count: Count


class WeightedReference(Entry):
    file: str
    weight: str                     # the metadata column the neighbours were weighted by


class ReferenceEntry(Entry):
    """Sorted leave-one-out top-k mean similarities (similarity percentiles)."""

    file: str
    k: Annotated[int, Field(ge=1, strict=True)]
    sampled_rows: Count | None = None
    weighted: WeightedReference | None = None


class SideIndexEntry(Entry):
    """Vectors kept beside the index (searched exactly) with their own reference, under a key
    the collection chose (e.g. a thumbnail collection's ``titles``)."""

    vectors: str
    rows: Count
    dim: Count | None = None
    reference: str | None = None
    k: Annotated[int, Field(ge=1, strict=True)] | None = None


class Tuning(Entry):
    """What ``tune`` measured; ``recall_lower_bound_95`` is the promise (held-out queries), 95%
    over all ``held_out_checks`` looks together: each look's bound at ``look_level`` (the
    ``correction``, e.g. Bonferroni: 0.05 / ``looks_allowed``)."""

    target_recall: float
    k: Annotated[int, Field(ge=1, strict=True)]
    recall_at_k_held_out: float
    target_met: Annotated[bool, Field(strict=True)]
    recall_at_k_tuning: float | None = None
    recall_lower_bound_95: float | None = None
    bound: str | None = None
    correction: str | None = None
    look_level: float | None = None
    looks_allowed: Count | None = None
    held_out_checks: Count | None = None
    ms_per_query: float | None = None
    tuning_queries: Count | None = None
    held_out_queries: Count | None = None
    queries_from: str | None = None
    trials: list[dict[str, Any]] | None = None


class Manifest(Entry):
    # what the index is
    format_version: Literal[1]
    factory: str
    metric: Literal["inner_product", "l2"]
    dim: Count
    ntotal: Count
    files: dict[str, FileEntry]
    ids: IdsEntry
    id_column: str | None = None                 # the metadata column that holds each row's id
    embedding: dict[str, Any] = Field(default_factory=dict)   # model/weights or feature schema: opaque here
    source_partitions: list[str] = Field(default_factory=list)
    built_at: str | None = None
    faiss_version: str | None = None
    # sharded layout
    layout: Literal["sharded"] | None = None
    shards: list[ShardEntry] | None = None
    shard_size: Count | None = None
    # build and tuning figures
    memory_budget_bytes: int | None = None
    train_points: Count | None = None
    build_seconds: float | None = None
    build_seconds_by_stage: dict[str, float] | None = None
    search_params: dict[str, int | float] = Field(default_factory=dict)
    tuning: Tuning | None = None
    range_margin: float = 0.0
    stored_vectors: str | None = None
    reference_scores: ReferenceEntry | None = None
    side_indexes: list[str] | None = None        # keys of extra fields that are SideIndexEntry blocks
    # versions
    version: str | None = None
    parent_version: str | None = None
    added_rows: Count | None = None
    # published copies
    snapshot: str | None = None
    published_from: str | None = None
    published_at: str | None = None
    published_names: dict[str, str] | None = None  # index-directory name -> published name

    @model_validator(mode="before")
    @classmethod
    def _ids_of_older_manifests(cls, data):
        # Manifests written before ids were described kept string ids in ids.npy (id_map.json when sharded).
        if isinstance(data, Mapping) and "ids" not in data:
            data = {**data, "ids": {"kind": STRING_IDS, "file": ID_MAP_FILE if data.get("layout") == SHARDED
                                    else IDS_FILE}}
        return data

    @field_validator("tuning", mode="before")
    @classmethod
    def _untuned(cls, value):
        return value or None  # exact indices were written with an empty tuning block

    @field_validator("files")
    @classmethod
    def _files_cover_something(cls, files: dict) -> dict:
        if not files:
            raise ValueError("is empty: a manifest must cover at least its index file")
        for name in files:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"{name!r} is not a plain file name")
        return files

    @model_validator(mode="after")
    def _named_files_are_covered(self) -> Manifest:
        named = {"ids": self.ids.file, "stored_vectors": self.stored_vectors,
                 "reference_scores": self.reference_scores.file if self.reference_scores else None,
                 "reference_scores.weighted": (self.reference_scores.weighted.file
                                               if self.reference_scores and self.reference_scores.weighted else None)}
        if self.layout == SHARDED:
            named.update({f"shards.{i}": shard.file for i, shard in enumerate(self.shards or [])})
        else:
            named["index"] = INDEX_FILE
        for key in self.side_indexes or []:
            entry = self._side_entry(key)
            named.update({f"{key}.vectors": entry.vectors, f"{key}.reference": entry.reference})
        for field, name in named.items():
            if name is not None and self.file_name(name) not in self.files:
                raise ValueError(f"{field} names {name!r}, which the files table does not cover")
        return self

    def _side_entry(self, key: str) -> SideIndexEntry:
        value = self._extras().get(key)
        if isinstance(value, SideIndexEntry):
            return value
        try:
            entry = SideIndexEntry.model_validate(value)
        except ValidationError as exc:
            raise ValueError(f"side index {key!r}: {error_reason(exc)}") from None
        self._extras()[key] = entry
        return entry

    def file_name(self, file: str) -> str:
        """Where a file named by its index-directory name lives here (published copies rename)."""
        return (self.published_names or {}).get(file, file)

    @property
    def is_sharded(self) -> bool:
        return self.layout == SHARDED

    @property
    def positions(self) -> bool:
        """True when ids are implicit positions (row i is id i)."""
        return self.ids.kind == POSITION_IDS

    def to_json(self) -> dict:
        """The JSON written to disk."""
        return self.model_dump(mode="json")

    def updated(self, **fields) -> Manifest:
        """A validated copy with ``fields`` replaced (typed or extra)."""
        return new_manifest({**self.to_json(), **fields}, "an updated manifest")


def error_reason(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``ntotal: Input should be a valid integer (found 'ten')``."""
    errors = exc.errors()
    parts = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(part) for part in error["loc"]) or "the top level"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] != "missing":
            message += f" (found {_short(error.get('input'))})"
        parts.append(f"{where}: {message}")
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more")
    return "; ".join(parts)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def new_manifest(data: Mapping, where: os.PathLike | str) -> Manifest:
    """Validate ``data`` as a manifest for ``where``; refused with a reason, never a traceback."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise IndexIntegrityError(f"manifest {where} is invalid: {error_reason(exc)}") from None


def parse_manifest(raw: bytes | str, source: os.PathLike | str) -> Manifest:
    """A manifest from its bytes (readers that hash what they parse read the file once)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexIntegrityError(f"manifest {source} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise IndexIntegrityError(f"manifest {source} is not a JSON object (found {type(data).__name__})")
    if data.get("format_version") != FORMAT_VERSION:
        raise IndexIntegrityError(f"manifest {source} has format_version {data.get('format_version')!r}; "
                                  f"this reader understands {FORMAT_VERSION}")
    return new_manifest(data, source)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The manifest of an index directory, or the manifest file itself (a published copy's)."""
    path = os.fspath(path)
    manifest_path = os.path.join(path, MANIFEST_FILE) if os.path.isdir(path) else path
    try:
        with open(manifest_path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise IndexIntegrityError(f"no manifest at {manifest_path}: the index was not written by "
                                  "thumblab or was only partly copied") from None
    return parse_manifest(raw, manifest_path)
