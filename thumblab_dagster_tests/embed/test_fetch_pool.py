"""FetchPool: one call's items run at most ``per_request`` at once; other calls are not held up by it."""

import threading

import pytest

from thumblab_dagster.lib.embed.fetch_pool import FetchPool

WAIT = 10  # seconds: only reached when the test fails


class Gate:
    """Items that block until opened, counting how many run at once."""

    def __init__(self):
        self.opened = threading.Event()
        self.lock = threading.Condition()
        self.running = self.peak = 0

    def __call__(self, item):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.lock.notify_all()
        try:
            assert self.opened.wait(WAIT)
            return item * 2
        finally:
            with self.lock:
                self.running -= 1

    def wait_running(self, n):
        with self.lock:
            return self.lock.wait_for(lambda: self.running >= n, WAIT)


def test_one_call_runs_at_most_per_request_items_at_once():
    gate = Gate()
    with FetchPool(workers=8, per_request=3) as pool:
        result = []
        caller = threading.Thread(target=lambda: result.extend(pool.map(gate, range(7))))
        caller.start()
        assert gate.wait_running(3)
        with gate.lock:
            assert gate.running == 3  # 8 workers free, yet the call holds only its share
        gate.opened.set()
        caller.join(WAIT)
    assert result == [0, 2, 4, 6, 8, 10, 12] and gate.peak == 3


def test_another_call_starts_while_one_holds_its_share():
    slow = Gate()
    with FetchPool(workers=4, per_request=2) as pool:
        held = threading.Thread(target=pool.map, args=(slow, range(10)))
        held.start()
        assert slow.wait_running(2)
        assert pool.map(lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]  # runs on the free workers, at once
        slow.opened.set()
        held.join(WAIT)
    assert slow.peak == 2


def test_an_error_is_raised_and_the_rest_are_not_started():
    started = []
    gate = threading.Event()

    def fn(item):
        started.append(item)
        if item == 0:
            raise ValueError("boom")
        assert gate.wait(WAIT)
        return item

    gate.set()
    with FetchPool(workers=2, per_request=1) as pool:
        with pytest.raises(ValueError, match="boom"):
            pool.map(fn, [0, 1, 2])
        assert started == [0]  # one at a time: the error is known before the next would start
        assert pool.map(fn, [1, 2]) == [1, 2]


def test_sizes_are_checked_and_per_request_is_at_most_the_pool():
    with pytest.raises(ValueError, match="at least 1"):
        FetchPool(workers=0, per_request=1)
    with FetchPool(workers=2, per_request=5) as pool:
        assert pool.per_request == 2
        assert pool.map(str, []) == []
