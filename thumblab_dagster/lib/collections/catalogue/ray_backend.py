"""The catalogue's embedding and shard building on Ray, with the in-process paths' results.

With ``THUMBLAB_RAY_ADDRESS`` set (``local`` starts a local Ray, otherwise a cluster address such as
``ray://head:10001``), ``ray_embed`` runs the embedding as Ray Data ``map_batches`` over an actor pool,
each actor loading CLIP once, and ``ray_build_shards`` fills every shard in its own Ray task with a copy
of the one trained empty index, under the rows' global positions (the engine's rule: train once, never
``merge_from`` without ids); ``ray_build_catalogue_index`` is ``build_catalogue_index`` with that fill.
All return what the in-process paths return (the same ids, vectors within float tolerance). Over Ray
Client (``ray://``), where Ray Data does not run, the embedding actors are driven by Ray's ActorPool.

Ray is imported inside the functions only: without the setting nothing imports it. A cluster's
workers need this package installed (the actors and tasks run its code).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import re
from collections.abc import Iterator
from datetime import datetime, timezone

import faiss
import numpy as np
import pandas as pd

from thumblab_dagster.lib.collections.catalogue.embeddings import (
    DEFAULT_BATCH_SIZE,
    Fetch,
    batch_line,
    embed_batch,
    finish_run,
    product_fetcher,
)
from thumblab_dagster.lib.collections.catalogue.shards import build_catalogue_index
from thumblab_dagster.lib.embed.clip import DEFAULT_MODEL, DEFAULT_PRECISION, DEFAULT_PRETRAINED, load_clip
from thumblab_dagster.lib.engine.index_dir import as_float32
from thumblab_dagster.lib.engine.manifest import Manifest
from thumblab_dagster.lib.engine.shards import labelled_part
from thumblab_dagster.lib.engine.sources import ArraySource, VectorSource, open_source
from thumblab_dagster.lib.engine.spec import IndexSpec, resolve_spec
from thumblab_dagster.lib.settings import SETTING

log = logging.getLogger(__name__)

LOCAL = "local"
SETTING_NAME = SETTING["ray_address"].env   # declared once, in lib/settings.py


# --- connecting ---------------------------------------------------------------------------

def ray_init(address: str | None, **options) -> None:
    """Join Ray once per process: ``local`` starts a local Ray, anything else is a cluster address.

    Already connected (a Dagster resource, a test fixture or an earlier call did it): kept as it is.
    ``options`` go to ``ray.init`` (``num_cpus=2`` for a small local Ray, ``runtime_env``, ...).
    """
    import ray

    if ray.is_initialized():
        return
    if not address:
        raise ValueError(f"no Ray address: set {SETTING_NAME} to local or a cluster address such as "
                         "ray://head:10001, or run in-process without it")
    if str(address).strip().lower() == LOCAL:
        # Ray nices its workers (15) by default; a local Ray does this process's own work, so it keeps
        # this process's priority rather than yield to everything else on the machine.
        system = {"worker_niceness": 0, **options.pop("_system_config", {})}
        ray.init(**{"include_dashboard": False, **options}, _system_config=system)
        return
    import ray.exceptions

    for attempt in (1, 2):
        try:
            ray.init(address=address, **options)
            return
        except ray.exceptions.AuthenticationError:
            raise ConnectionError(f"{SETTING_NAME}={address!r}: Ray's token authentication failed: give this machine "
                                  "the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN), or unset RAY_AUTH_MODE "
                                  "for a cluster started without a token") from None
        except ConnectionAbortedError as exc:
            # Ray Client's server could not start this client's session (seen once on a busy head just after
            # `ray start`, fine on the next try): once more before giving up
            if attempt == 1:
                log.warning("%s=%r: Ray Client refused the session (%s); trying once more", SETTING_NAME, address,
                            _one_line(exc))
                continue
            raise _cannot_join(address, exc) from None
        except (ConnectionError, TimeoutError, RuntimeError, ray.exceptions.RayError) as exc:
            raise _cannot_join(address, exc) from None


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (Ray Client puts the server's reason on the second)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _cannot_join(address: str, exc: BaseException) -> ConnectionError:
    return ConnectionError(f"{SETTING_NAME}={address!r}: cannot join the Ray cluster ({_one_line(exc)}); check that it "
                           "runs and is reachable from here (a cluster with token authentication also needs "
                           "RAY_AUTH_MODE=token and its token here), or use local")


def _connected(address: str | None) -> None:
    import ray

    if address:
        ray_init(address)
    elif not ray.is_initialized():
        raise RuntimeError(f"Ray is not running: pass address= (the value of {SETTING_NAME}) or call ray.init() first")


@contextlib.contextmanager
def _failures_in_one_line(what: str):
    """A task's or actor's error as one line naming its cause (Ray's own message is its whole traceback)."""
    import ray.exceptions

    try:
        yield
    except ray.exceptions.RayError as exc:
        raise RuntimeError(f"{what} failed: {root_cause(exc)}") from exc


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException) -> str:
    """The innermost ``SomeError: message`` line of a Ray error's traceback text, else its last line."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    found = [line for line in lines if _ERROR_LINE.match(line)]
    return (found or lines or [type(exc).__name__])[-1][:300]


def _use_assigned_cpus(torch_too: bool) -> int:
    """Give faiss (and torch, for CLIP) the CPUs Ray assigned to this task or actor.

    A reused worker keeps the thread count of the process's first task (1), whatever the task asks for.
    """
    import ray

    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    faiss.omp_set_num_threads(cpus)
    if torch_too:  # only where CLIP runs: importing torch costs a shard task seconds
        import torch

        torch.set_num_threads(cpus)
    return cpus


# --- embedding -----------------------------------------------------------------------------

def ray_embed(products: pd.DataFrame, *, address: str | None = None, model: str = DEFAULT_MODEL,
              pretrained: str | None = DEFAULT_PRETRAINED, precision: str = DEFAULT_PRECISION, device: str = "cpu",
              batch_size: int = DEFAULT_BATCH_SIZE, fetch: Fetch | None = None, actors: int | None = None,
              cpus_per_actor: float = 1, gpus_per_actor: float = 0, log=logging.getLogger(__name__),
              embedded_at: datetime | None = None) -> tuple[pd.DataFrame, dict]:
    """``embed_products`` on Ray: the same rows (products' order) and stats, the same log lines.

    Each Ray Data row is one batch of ``batch_size`` products; ``map_batches`` hands the batches to a pool
    of ``actors`` (default: the cluster's CPUs per actor, at most one per batch), each of which loads CLIP
    (``model``, ``pretrained``, ``precision``, ``device``) once and runs ``embed_batch``, the in-process
    batch step, with ``fetch`` (default ``product_fetcher()``; it travels to the actors, so it must pickle).
    Batches are logged as they finish (``Batch N: Total=..., Embedded=...``, N in finishing order).
    Over Ray Client (``ray://``), where Ray Data does not run, the same actors are driven by Ray's ActorPool.
    """
    import ray

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be above 0, got {cpus_per_actor}")
    say, warn = _say(log)
    embedded_at = embedded_at or datetime.now(timezone.utc)  # one time for the run, as in-process
    total = len(products)
    # A whole batch is one row, pickled: the actor gets the very frame embed_products would (dtypes kept).
    batches = [{"number": number, "products": pickle.dumps(products.iloc[start:start + batch_size],
                                                            protocol=pickle.HIGHEST_PROTOCOL)}
               for number, start in enumerate(range(0, total, batch_size), start=1)]
    frames: dict[int, pd.DataFrame] = {}
    broken: dict[int, list] = {}
    if batches:
        _connected(address)
        pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
        pool = max(1, min(pool, len(batches)))
        actor = {"model": model, "pretrained": pretrained, "precision": precision, "device": device,
                 "fetch": fetch or product_fetcher(), "embedded_at": embedded_at}
        resources = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor or None}
        run = _on_actor_pool if _over_ray_client() else _on_ray_data
        say(f"embedding {total} products in {len(batches)} batches on Ray ({pool} actors, one CLIP each)")
        done = 0
        with _failures_in_one_line("embedding on Ray"):
            for finished, (number, payload) in enumerate(run(batches, pool, actor, resources), start=1):
                frame, failed = pickle.loads(payload)
                for b in failed:
                    warn(f"skipped the image of {b.id} ({b.kind}): {b.error}")
                frames[number], broken[number] = frame, failed
                done += len(frame)
                say(batch_line(finished, total, done))
    return finish_run([frames[n] for n in sorted(frames)], [b for n in sorted(broken) for b in broken[n]], total,
                      say, warn)


def _over_ray_client() -> bool:
    import ray.util.client

    return ray.util.client.ray.is_connected()


def _on_ray_data(batches: list[dict], pool: int, actor: dict, resources: dict) -> Iterator[tuple[int, bytes]]:
    """(batch number, pickled result) per batch as they finish: Ray Data ``map_batches`` over an actor pool."""
    import ray

    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False  # the Batch N lines are the progress:
    # without a terminal, Ray Data's bars become a dozen log lines every ten seconds
    try:
        yield from _ray_data_rows(batches, pool, actor, resources)
    finally:
        context.enable_progress_bars = bars


def _ray_data_rows(batches: list[dict], pool: int, actor: dict, resources: dict) -> Iterator[tuple[int, bytes]]:
    import ray

    dataset = ray.data.from_items(batches).map_batches(
        # one batch queued per actor: batches take seconds each, and a deeper queue leaves one actor idle at the end
        _BatchEmbedder, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs=actor, **resources)
    for row in dataset.iter_rows():
        yield int(row["number"]), row["result"]


def _on_actor_pool(batches: list[dict], pool: int, actor: dict, resources: dict) -> Iterator[tuple[int, bytes]]:
    """The same, driven by ``ray.util.ActorPool``: Ray Data does not run over Ray Client (ray-project/ray#48682)."""
    import ray
    from ray.util import ActorPool

    remote = ray.remote(**{k: v for k, v in resources.items() if v is not None})(_BatchEmbedder)
    workers = ActorPool([remote.remote(**actor) for _ in range(pool)])
    rows = ({"number": np.array([b["number"]]), "products": np.array([b["products"]], dtype=object)} for b in batches)
    for result in workers.map_unordered(lambda worker, row: worker.embed.remote(row), rows):
        yield int(result["number"][0]), result["result"][0]


class _BatchEmbedder:
    """(A Ray actor) CLIP loaded once; each call embeds batches of products with ``embed_batch``."""

    def __init__(self, *, model: str, pretrained: str | None, precision: str, device: str, fetch: Fetch,
                 embedded_at: datetime):
        _use_assigned_cpus(torch_too=True)
        self.clip = load_clip(model, pretrained, device, precision=precision)
        self.fetch, self.embedded_at = fetch, embedded_at

    def embed(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in rows["products"]:
            frame, broken = embed_batch(pickle.loads(payload), self.fetch, self.clip, embedded_at=self.embedded_at)
            results.append(pickle.dumps((frame, broken), protocol=pickle.HIGHEST_PROTOCOL))
        return {"number": rows["number"], "result": np.array(results, dtype=object)}

    __call__ = embed  # Ray Data calls the instance


def _say(log):
    """(info, warning) of a logger-like object (Dagster's ``context.log``, a ``logging.Logger``) or a callable."""
    if hasattr(log, "info"):
        return log.info, getattr(log, "warning", log.info)
    return log, log


# --- shards ---------------------------------------------------------------------------------

def ray_build_shards(trained_empty: faiss.Index, vectors, shards: list[dict], *, address: str | None = None,
                     cpus_per_task: float = 1, max_in_flight: int | None = None) -> list[faiss.Index]:
    """One Ray task per shard fills a copy of ``trained_empty`` with its rows under their global positions.

    ``vectors``: anything ``open_source`` reads (an array, a ``.npy`` or an embeddings parquet), read
    once, in order; ``shards``: ``plan_shards(n, shard_size)`` (file, offset, count). Returns the filled
    shard indices in ``shards``' order, as ``labelled_part`` + ``add_with_ids`` would in-process: byte for byte
    at the same faiss thread count (each task uses its ``cpus_per_task``); at another, a vector exactly tied
    between two inverted lists may land in the other one, as between two in-process builds with different
    thread counts (BLAS sums in another order). At most
    ``max_in_flight`` shards' vectors (default: the cluster's CPUs per task, plus one) are in Ray's object
    store at once, so a collection larger than memory streams through.
    """
    import ray

    if cpus_per_task <= 0:
        raise ValueError(f"cpus_per_task must be above 0, got {cpus_per_task}")
    source = open_source(vectors)
    _check_plan(trained_empty, source, shards)
    if not shards:
        return []
    _connected(address)
    fill = ray.remote(num_cpus=cpus_per_task)(_fill_shard)
    empty = ray.put(faiss.serialize_index(trained_empty))  # once, shared by every task
    limit = max_in_flight or int(ray.cluster_resources().get("CPU", 1) // cpus_per_task) + 1
    parts: list[faiss.Index | None] = [None] * len(shards)
    pending: dict = {}

    def collect_one() -> None:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        parts[pending.pop(ready)] = faiss.deserialize_index(ray.get(ready))

    with _failures_in_one_line("building shards on Ray"):
        for i, chunk in enumerate(_shard_chunks(source, shards)):
            while len(pending) >= max(1, limit):
                collect_one()
            # the vectors go to the object store now; it frees them when the task is done
            pending[fill.remote(empty, shards[i]["offset"], chunk)] = i
        while pending:
            collect_one()
    return parts


def ray_build_catalogue_index(target: str | os.PathLike, vectors, ids, *, shard_size: int,
                              spec: IndexSpec | None = None, address: str | None = None,
                              cpus_per_task: float = 1) -> Manifest:
    """``build_catalogue_index`` with its shards filled by ``ray_build_shards``: the engine trains once, Ray
    tasks fill the copies, the engine tunes, checks and writes as in-process (same files, same id map)."""
    fill = functools.partial(ray_build_shards, address=address, cpus_per_task=cpus_per_task)
    return build_catalogue_index(target, vectors, ids, shard_size=shard_size,
                                 spec=resolve_spec(spec, fill_shards=fill))


def _check_plan(trained_empty: faiss.Index, source: VectorSource, shards: list[dict]) -> None:
    if not trained_empty.is_trained or trained_empty.ntotal:
        raise ValueError(f"ray_build_shards needs a trained, empty index (is_trained={trained_empty.is_trained}, "
                         f"ntotal={trained_empty.ntotal}): train once with train_empty and pass that")
    if trained_empty.d != source.d:
        raise ValueError(f"the index is {trained_empty.d}-d but the vectors are {source.d}-d: train on these vectors")
    offset = 0
    for shard in shards:
        if shard["offset"] != offset or shard["count"] < 1:
            raise ValueError(f"shard {shard.get('file')} starts at {shard['offset']} with {shard['count']} rows, "
                             f"expected to start at {offset}: pass plan_shards(n, shard_size)")
        offset += shard["count"]
    if offset != source.n:
        raise ValueError(f"the shards cover {offset:,} rows but there are {source.n:,} vectors: "
                         "pass plan_shards(n, shard_size) for these vectors")


def _shard_chunks(source: VectorSource, shards: list[dict], batch_size: int = 65_536) -> Iterator[np.ndarray]:
    """Each shard's rows as one float32 array, reading ``source`` once in order."""
    if isinstance(source, ArraySource):  # slices are views: no copy before Ray's own
        for shard in shards:
            yield as_float32(source.array[shard["offset"]:shard["offset"] + shard["count"]])
        return
    shard_iter = iter(shards)
    shard = next(shard_iter, None)
    buffer = np.empty((shard["count"], source.d), dtype=np.float32) if shard else None
    filled = 0
    for _, batch in source.batches(batch_size):
        while len(batch) and shard is not None:
            take = min(len(batch), shard["count"] - filled)
            buffer[filled:filled + take] = batch[:take]
            filled, batch = filled + take, batch[take:]
            if filled == shard["count"]:
                yield buffer
                shard, filled = next(shard_iter, None), 0
                buffer = np.empty((shard["count"], source.d), dtype=np.float32) if shard else None


def _fill_shard(empty_bytes: np.ndarray, offset: int, vectors: np.ndarray) -> np.ndarray:
    """(In a Ray task) a copy of the trained empty index holding ``vectors`` under global positions from
    ``offset``, serialised."""
    _use_assigned_cpus(torch_too=False)
    part = labelled_part(faiss.deserialize_index(empty_bytes))
    part.add_with_ids(vectors, np.arange(offset, offset + len(vectors), dtype=np.int64))
    return faiss.serialize_index(part)
