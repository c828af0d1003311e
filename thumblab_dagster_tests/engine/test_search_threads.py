"""OpenMP threads per search: one query on one thread, a batch on every core, per calling thread."""

import threading

import faiss
import numpy as np

from thumblab_dagster.lib.engine.search import ALL_THREADS, Searcher, faiss_threads, threads_for

D = 32


class Observed:
    """A real faiss index that notes the calling thread's OpenMP thread count at each search."""

    def __init__(self, index: faiss.Index):
        self.index, self.threads = index, []

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries, k):
        self.threads.append(faiss.omp_get_max_threads())
        return self.index.search(queries, k)

    def range_search(self, queries, radius):
        self.threads.append(faiss.omp_get_max_threads())
        return self.index.range_search(queries, radius)


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def observed_searcher(n: int = 500) -> tuple[Searcher, Observed]:
    flat = faiss.IndexFlatIP(D)
    flat.add(unit(n, 0))
    part = Observed(flat)
    return Searcher([part]), part


def in_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_the_thread_count_is_set_inside_the_block_and_restored_after():
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    try:
        with faiss_threads(1):
            raise KeyError("boom")
    except KeyError:
        pass
    assert faiss.omp_get_max_threads() == before


def test_the_count_belongs_to_the_calling_thread():
    # faiss-cpu ships libgomp, whose thread count is per thread: a service thread that searches
    # one query on one thread leaves every other thread on its own count.
    inside, seen_elsewhere = threading.Event(), []

    def single_query_thread():
        with faiss_threads(1):
            inside.set()
            done.wait(10)

    done = threading.Event()
    here = faiss.omp_get_max_threads()
    worker = threading.Thread(target=single_query_thread)
    worker.start()
    assert inside.wait(10)
    seen_elsewhere.append(faiss.omp_get_max_threads())
    seen_elsewhere.append(in_new_thread(faiss.omp_get_max_threads))
    done.set()
    worker.join()
    assert seen_elsewhere == [here, ALL_THREADS]  # this thread's own count; a new thread's default


def test_a_single_query_runs_on_one_thread_and_a_batch_on_every_core():
    searcher, part = observed_searcher()
    queries = unit(64, 1)
    before = faiss.omp_get_max_threads()
    one = searcher.search(queries[:1], 10)
    batch = searcher.search(queries, 10)
    assert part.threads == [1, ALL_THREADS] and threads_for(1) == 1 and threads_for(64) == ALL_THREADS
    assert faiss.omp_get_max_threads() == before  # restored
    # the thread count changes the speed, never the answer
    np.testing.assert_array_equal(one[1], batch[1][:1])
    np.testing.assert_allclose(one[0], batch[0][:1], atol=1e-6)


def test_a_batch_gets_every_core_even_where_the_caller_chose_one_and_keeps_its_choice():
    searcher, part = observed_searcher()

    def caller_on_one_thread():
        faiss.omp_set_num_threads(1)
        searcher.search(unit(16, 2), 5)
        return faiss.omp_get_max_threads()

    assert in_new_thread(caller_on_one_thread) == 1
    assert part.threads == [ALL_THREADS]


def test_range_search_picks_threads_the_same_way():
    searcher, part = observed_searcher()
    queries = unit(8, 3)
    one = searcher.range_search(queries[:1], 0.3)
    many = searcher.range_search(queries, 0.3)
    assert part.threads == [1, ALL_THREADS]
    np.testing.assert_array_equal(one[0].positions, many[0].positions)
