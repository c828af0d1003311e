"""A fetch pool shared by many callers, where one caller holds at most its share of the workers.

The scoring service fetches each request's thumbnails on one global pool. With a plain
``ThreadPoolExecutor`` one request whose thumbnails trickle in could take every worker, and the next
request would wait behind it. ``FetchPool.map`` runs at most ``per_request`` of one call's items at
once, so a slow upstream delays only the call that named it; the global pool is sized for several
such calls at the same time (``workers`` >= a few x ``per_request``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class FetchPool:
    def __init__(self, workers: int, per_request: int, *, thread_name_prefix: str = "fetch"):
        if workers < 1 or per_request < 1:
            raise ValueError(f"workers ({workers}) and per_request ({per_request}) must be at least 1")
        self.workers = workers
        self.per_request = min(per_request, workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]``, at most ``per_request`` at once on the pool; in order.

        An exception ``fn`` raises is raised here; items not started by then never start.
        """
        slots = threading.Semaphore(self.per_request)
        failed = threading.Event()
        futures: list[Future[R]] = []

        def done(future: Future[R]) -> None:
            if not future.cancelled() and future.exception() is not None:
                failed.set()
            slots.release()

        try:
            for item in items:
                slots.acquire()  # the calling thread waits for one of its own slots, never for another call's
                if failed.is_set():
                    break
                future = self._executor.submit(fn, item)
                future.add_done_callback(done)
                futures.append(future)
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # a no-op for finished ones; after an error, the rest do not start

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> FetchPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
