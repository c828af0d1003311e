"""The alignment checker: the seed's three parts and output lines, on an index directory or its published copy.

1. **sanity**: every index position maps to its id: the id map (``id_map_<name>.json``, the
   seed consumers' view), the engine's ``ids.npy`` and the metadata's id column agree position by
   position, ids are unique, files match the manifest's checksums, and the counts of index and id
   map agree for the whole (``Mismatch for <name>: index has N, id_map has M``) and per shard
   (``Mismatch for <shard file>: ...``: the id map entries falling in the shard's positions);
2. **random search**: a seeded random sample of products is re-fetched and re-encoded with the
   recorded model (``encode``, the caller's: this module loads no model), searched, and each printed
   as ``[42/200] ok id=... | pos(id_map)=102 -> shard#2 | top1_pos=102 -> shard#2 | rank=1 |
   cos=0.9987``; a sample fails below rank 1 or cosine ``MIN_COSINE``. Identical-image ties count
   as found: the product's own vector is as near the query as the first hit;
3. **shard verification**: global position <-> (shard, offset) for every shard: offsets contiguous,
   counts as planned, and every row of a shard labelled with its global position.

Cosines are computed from normalised vectors (the query and the vectors the index holds, read
back), so an L2 index and an inner-product index report the same cosine (for unit vectors under
L2, cos = 1 - d/2). Every line goes to ``out`` and into the report; a failure lists the first
mismatches again at the end.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.catalogue.shards import SEED_ID_MAP, read_seed_id_map
from thumblab_dagster.lib.engine.ids import id_array
from thumblab_dagster.lib.engine.index_dir import INDEX_FILE, METADATA_FILE, checksum_problems, read_manifest
from thumblab_dagster.lib.engine.search import validation_params
from thumblab_dagster.lib.engine.shards import load_any

MIN_COSINE = 0.999
TIE = 1e-5            # cosine: the same image encoded in different batches differs by float noise
SEARCH_K = 10
ENCODE_BATCH = 64     # images re-encoded per call of ``encode``
SHOWN = 10            # first mismatches printed per kind
_SEED_NAME = re.compile(r"^id_map_(.+)\.json$")

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class CheckReport:
    passed: bool
    problems: list[str]                     # the first mismatches, one line each
    lines: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


class _Lines:
    """Everything printed, in order, and the problems among it."""

    def __init__(self, out: Callable[[str], None]):
        self.out, self.lines, self.problems = out, [], []

    def __call__(self, line: str, problem: bool = False) -> None:
        self.out(line)
        self.lines.append(line)
        if problem:
            self.problems.append(line)

    def some(self, lines: list[str], what: str, total: int | None = None) -> None:
        """The first ``SHOWN`` problem lines, then how many more of ``total`` (default: all ``lines``)."""
        total = len(lines) if total is None else total
        for line in lines[:SHOWN]:
            self(line, problem=True)
        if total > SHOWN:
            self(f"... and {total - SHOWN} more {what}", problem=True)


@dataclass
class _Index:
    """What the checker reads, whatever it was given: parts with their planned offsets, the id maps."""

    loaded: object                  # engine ShardedIndex or LoadedIndex
    name: str
    parts: list[faiss.Index]
    shards: list[dict]              # file (as on disk here), offset, count
    engine_ids: np.ndarray
    engine_ids_file: str
    id_map: np.ndarray              # the seed's id map, or the engine's ids when there is none
    id_map_file: str
    directory: Path

    @property
    def ntotal(self) -> int:
        return int(sum(p.ntotal for p in self.parts))

    def shard_of(self, position: int) -> str:
        for i, shard in enumerate(self.shards):
            if shard["offset"] <= position < shard["offset"] + shard["count"]:
                return str(i)
        return "?"


def check_alignment(index, *, sample: int = 200, encode: Encode | None = None,
                    urls_by_id: Mapping[str, str] | None = None, out: Callable[[str], None] = print,
                    seed: int = 0, name: str | None = None, k: int = SEARCH_K, min_cosine: float = MIN_COSINE,
                    verify_checksums: bool = True) -> CheckReport:
    """Run the three parts on ``index``: an index directory, a published copy (renamed files), or one
    loaded by the engine (``load_sharded``/``load_any``).

    ``encode``: image URLs -> one vector per URL, with the model the manifest records (None: the
    stored vectors are searched instead, which checks positions and shards but not ids against
    images). ``urls_by_id``: each product id's image URL. ``name``: the catalogue's name in the lines
    (default: from the published id map's name, else the directory's).
    """
    say = _Lines(out)
    checksums: list[str] = []
    try:
        loaded = index
        if isinstance(index, (str, os.PathLike)):
            manifest = read_manifest(index)
            checksums = checksum_problems(index, manifest) if verify_checksums else []
            loaded = load_any(index, manifest, verify=False)
        view = _view(loaded, name)
    except Exception as exc:  # unreadable manifest, shard or id map: report it, as a failed check
        say(f"cannot read the index at {getattr(index, 'directory', index)}: {exc}", problem=True)
        return CheckReport(False, say.problems, say.lines, {"positions_verified": 0, "positions_total": 0})
    ids_ok = _sanity(view, say, checksums)
    sampled = _random_search(view, say, sample, encode, urls_by_id, seed, k, min_cosine)
    labels_ok = _shard_verification(view, say)
    return _summary(view, say, ids_ok & labels_ok, sampled)


# --- reading ---------------------------------------------------------------------------------

def _view(loaded, name: str | None) -> _Index:
    manifest, directory = loaded.manifest, Path(loaded.directory)
    if manifest.is_sharded:
        parts = list(loaded.shards)
        shards = [{**s, "file": manifest.file_name(s["file"])} for s in loaded.offsets]
    else:
        parts = [loaded.index]
        shards = [{"file": manifest.file_name(INDEX_FILE), "offset": 0, "count": int(manifest.ntotal)}]
    engine_ids = id_array(loaded.ids)
    engine_file = manifest.file_name(manifest.ids.file) if manifest.ids.file else "positions"
    seed_file = manifest.file_name(SEED_ID_MAP)
    if (directory / seed_file).exists():
        id_map, id_map_file = read_seed_id_map(directory / seed_file), seed_file
    else:
        id_map, id_map_file = engine_ids, engine_file
    return _Index(loaded, name or _name_of(manifest, directory), parts, shards, engine_ids, engine_file,
                  id_map, id_map_file, directory)


def _name_of(manifest, directory: Path) -> str:
    match = _SEED_NAME.match(manifest.file_name(SEED_ID_MAP))
    if match:
        return match.group(1)
    return str(manifest.get("catalogue") or directory.name)


def _labels(part: faiss.Index) -> np.ndarray:
    """The global positions a part's rows carry (a plain index: its row numbers)."""
    return faiss.vector_to_array(part.id_map) if hasattr(part, "id_map") else np.arange(part.ntotal, dtype=np.int64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _read_back(view: _Index, position: int) -> np.ndarray | None:
    """The normalised vector the index holds under ``position``; None where no part holds it."""
    try:
        return _unit(view.loaded.searcher.reconstruct(int(position)))
    except (RuntimeError, IndexError):
        return None


# --- 1. sanity -------------------------------------------------------------------------------

def _sanity(view: _Index, say: _Lines, checksums: list[str]) -> np.ndarray:
    """Positions whose id every view agrees on (id map, engine ids, metadata), unique; prints mismatches."""
    say("== sanity ==")
    n, total = view.ntotal, _total(view)
    say(f"{view.name}: index has {n} vectors in {len(view.parts)} shards, {view.id_map_file} has {len(view.id_map)} ids")
    say.some([f"checksum: {p}" for p in checksums], "checksum problems")
    if n != len(view.id_map):
        say(f"Mismatch for {view.name}: index has {n}, id_map has {len(view.id_map)}", problem=True)
    counts = []
    for shard, part in zip(view.shards, view.parts):
        covered = max(0, min(shard["offset"] + part.ntotal, len(view.id_map)) - shard["offset"])
        if covered != part.ntotal:
            counts.append(f"Mismatch for {shard['file']}: index has {part.ntotal}, id_map has {covered}")
    say.some(counts, "shards whose counts differ")

    ok = np.zeros(total, dtype=bool)
    ok[:len(view.id_map)] = True
    views = [(view.engine_ids_file, view.engine_ids)] if view.id_map_file != view.engine_ids_file else []
    views += _metadata_ids(view)
    for file, ids in views:
        if len(ids) != len(view.id_map):
            say(f"Mismatch for {view.name}: {file} has {len(ids)}, id_map has {len(view.id_map)}", problem=True)
        m = min(len(ids), len(view.id_map))
        wrong = np.flatnonzero(ids[:m] != view.id_map[:m])
        ok[m:] = False
        ok[wrong] = False
        say.some([f"position {p}: {view.id_map_file} has {str(view.id_map[p])!r}, {file} has {str(ids[p])!r}"
                  for p in wrong[:SHOWN]], f"positions where {file} differs", len(wrong))
    unique, counts = np.unique(view.id_map, return_counts=True)
    repeated = unique[counts > 1]
    if len(repeated):
        ok[np.isin(view.id_map, repeated)] = False
        say.some([f"id {str(i)!r} appears at positions {np.flatnonzero(view.id_map == i).tolist()[:5]}"
                  for i in repeated[:SHOWN]], "repeated ids", len(repeated))
    ok[n:] = False  # no vector behind these entries
    say(f"sanity: {int(ok.sum())}/{total} positions map to their ids")
    return ok


def _total(view: _Index) -> int:
    return max(view.ntotal, len(view.id_map), sum(s["count"] for s in view.shards))


def _metadata_ids(view: _Index) -> list[tuple[str, np.ndarray]]:
    manifest = view.loaded.manifest
    file = manifest.file_name(METADATA_FILE)
    if not manifest.id_column or not (view.directory / file).exists():
        return []
    column = pd.read_parquet(view.directory / file, columns=[manifest.id_column])[manifest.id_column]
    return [(f"{file} {manifest.id_column}", id_array(column.astype(str)))]


# --- 2. random search --------------------------------------------------------------------------

def _random_search(view: _Index, say: _Lines, sample: int, encode: Encode | None,
                   urls_by_id: Mapping[str, str] | None, seed: int, k: int, min_cosine: float) -> dict:
    """Re-encode sampled products, search, one line each; the ok count and the lowest cosine."""
    positions = np.sort(np.random.default_rng(seed).choice(len(view.id_map), size=min(sample, len(view.id_map)),
                                                           replace=False))
    n = len(positions)
    say(f"== random search ({n} samples, {'re-encoded images' if encode else 'stored vectors: no encoder given'}) ==")
    if not n or not view.ntotal:
        return {"ok": 0, "total": n, "min_cos": None}
    queries, why = _queries(view, positions, encode, urls_by_id)
    searcher = view.loaded.searcher
    searcher = searcher.with_params(**validation_params(view.loaded.manifest.factory, searcher.params))
    searchable = np.flatnonzero(why == "")
    found = np.full((n, min(k, view.ntotal)), -1, dtype=np.int64)
    if len(searchable):
        found[searchable] = searcher.search(queries[searchable], k)[1]
    ok, cosines, failures = 0, [], []
    for j, position in enumerate(positions):
        product = str(view.id_map[position])
        head = f"[{j + 1}/{n}] {{}} id={product} | pos(id_map)={position} -> shard#{view.shard_of(position)}"
        if why[j]:
            failures.append(head.format("FAIL") + f" | {why[j]}")
            say(failures[-1])
            continue
        top = int(found[j, 0])
        rank, cos = _rank(view, queries[j], position, found[j])
        passed = rank == 1 and cos is not None and cos >= min_cosine
        ok += passed
        if cos is not None:
            cosines.append(cos)
        line = (head.format("ok" if passed else "FAIL") + f" | top1_pos={top} -> shard#{view.shard_of(top)}"
                f" | rank={rank if rank else f'>{found.shape[1]}'} | cos={'n/a' if cos is None else f'{cos:.4f}'}")
        say(line)
        if not passed:
            failures.append(line)
    say(f"random search: {ok}/{n} found themselves at rank 1 with cos >= {min_cosine}"
        + (f", min cos {min(cosines):.4f}" if cosines else ""))
    say.problems += failures[:SHOWN]
    if len(failures) > SHOWN:
        say.problems.append(f"... and {len(failures) - SHOWN} more samples failed")
    return {"ok": ok, "total": n, "min_cos": float(min(cosines)) if cosines else None}


def _queries(view: _Index, positions: np.ndarray, encode: Encode | None,
             urls_by_id: Mapping[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised query vectors, and per sample why it cannot be searched ("" when it can)."""
    d = view.parts[0].d
    queries, why = np.zeros((len(positions), d), dtype=np.float32), np.full(len(positions), "", dtype=object)
    if encode is None:
        for j, position in enumerate(positions):
            vector = _read_back(view, position)
            if vector is None:
                why[j] = "its position is in no shard"
            else:
                queries[j] = vector
        return queries, why
    urls = [(urls_by_id or {}).get(str(view.id_map[p])) for p in positions]
    why[[u is None for u in urls]] = "no image URL for this id"
    todo = [j for j, u in enumerate(urls) if u is not None]
    for start in range(0, len(todo), ENCODE_BATCH):
        batch = todo[start:start + ENCODE_BATCH]
        vectors = np.asarray(encode([urls[j] for j in batch]), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(batch):
            raise ValueError(f"encode returned shape {vectors.shape} for {len(batch)} images: it must return one "
                             "vector per image URL")
        if vectors.shape[1] != d:
            why[batch] = f"re-encoded {vectors.shape[1]}-d, the index holds {d}-d: encode with the recorded model"
            continue
        norms = np.linalg.norm(vectors, axis=1)
        good = np.isfinite(norms) & (norms > 0)
        why[np.asarray(batch)[~good]] = "image could not be re-encoded"
        queries[np.asarray(batch)[good]] = _unit(vectors[good])
    return queries, why


def _rank(view: _Index, query: np.ndarray, position: int, found: np.ndarray) -> tuple[int | None, float | None]:
    """The product's rank among the hits (1 when its own vector is as near as the first hit: identical
    images tie in any order), and the cosine of the query with the vector stored at its position."""
    own = _read_back(view, position)
    cos = float(own @ query) if own is not None else None
    hits = [int(p) for p in found if p >= 0]
    rank = hits.index(position) + 1 if position in hits else None
    if rank != 1 and cos is not None and hits:
        first = _read_back(view, hits[0])
        if first is not None and cos >= float(first @ query) - TIE:
            rank = 1
    return rank, cos


# --- 3. shard verification -------------------------------------------------------------------

def _shard_verification(view: _Index, say: _Lines) -> np.ndarray:
    """Positions whose shard row carries them; one line per shard."""
    say("== shard verification ==")
    ok, expected_offset = np.zeros(_total(view), dtype=bool), 0
    for i, (shard, part) in enumerate(zip(view.shards, view.parts)):
        offset, count, wrongs = shard["offset"], shard["count"], []
        if offset != expected_offset:
            wrongs.append(f"offset {offset}, expected {expected_offset}")
        if part.ntotal != count:
            wrongs.append(f"{part.ntotal} vectors, planned {count}")
        labels = _labels(part)
        want = offset + np.arange(len(labels))
        right = (labels == want) & (want < offset + count)
        if not right.all():
            row = int(np.argmin(right))
            wrongs.append(f"{int((~right).sum())} rows carry another position, e.g. local row {row} carries "
                          f"{int(labels[row])}, expected {int(want[row])}")
        ok[want[right]] = True
        span = f"positions {offset}..{offset + count - 1} ({count} vectors)"
        say(f"shard#{i} {shard['file']}: {span} " + ("ok" if not wrongs else "FAIL: " + "; ".join(wrongs)),
            problem=bool(wrongs))
        expected_offset = offset + count
    if expected_offset != len(view.id_map):
        say(f"shard verification: the shards cover {expected_offset} positions, id_map has {len(view.id_map)}",
            problem=True)
    return ok


def _summary(view: _Index, say: _Lines, verified: np.ndarray, sampled: dict) -> CheckReport:
    total, good = len(verified), int(verified.sum())
    metrics = {"positions_verified": good, "positions_total": total,
               "positions_verified_share": round(good / total, 6) if total else 1.0,
               "sampled_ok": sampled["ok"], "sampled_total": sampled["total"], "min_cos": sampled["min_cos"],
               "shards": len(view.parts), "ntotal": view.ntotal, "id_map_entries": len(view.id_map)}
    passed = not say.problems and good == total
    lowest = "n/a" if sampled["min_cos"] is None else f"{sampled['min_cos']:.4f}"
    summary = (f"{'PASSED' if passed else 'FAILED'}: {good}/{total} positions verified "
               f"({100 * metrics['positions_verified_share']:.1f}%), {sampled['ok']}/{sampled['total']} sampled "
               f"found at rank 1, min cos {lowest}")
    problems = list(say.problems)
    if not passed:
        say("first mismatches:")
        for line in problems[:SHOWN]:
            say(f"  {line}")
    say(summary)
    return CheckReport(passed, problems or ([summary] if not passed else []), say.lines, metrics)
