"""The cross-request micro-batcher: batches formed from concurrent submissions, rows to their callers,
errors to every caller of a batch, the window, close(); and CLIP rows equal to unbatched ones.

Batches are made to pile up deterministically: the batch function blocks on an Event (or the test
holds the model lock) while the other items are queued; no sleeps.
"""

import threading
import time

import numpy as np
import pytest
from PIL import Image

from thumblab_dagster.lib.collections.thumbnails.sample_source import render_thumbnail
from thumblab_dagster.lib.embed.batching import (
    IMAGE,
    TEXT,
    BatcherClosed,
    ClipBatchers,
    MicroBatcher,
    split_preprocess,
    trims_text,
)
from thumblab_dagster.lib.embed.clip import embed_images, embed_texts, load_clip

DEADLINE = 60  # seconds; only to fail instead of hanging if the batcher lost an item


class Gate:
    """A batch function that records each batch and, while ``hold`` is set, blocks the first batch
    until ``release()`` (so that later submissions pile up behind it)."""

    def __init__(self, fn=lambda x: x * 2, hold=True):
        self.fn, self.batches = fn, []
        self.entered, self.gate = threading.Event(), threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(DEADLINE)
        return [self.fn(x) for x in items]

    def release(self):
        self.gate.set()


def test_a_batch_is_formed_from_the_submissions_that_wait():
    gate = Gate()
    with MicroBatcher(gate, window_s=0, max_batch=32) as batcher:
        first = batcher.submit_nowait(0)
        assert gate.entered.wait(DEADLINE)  # the first batch runs, and blocks
        rest = [batcher.submit_nowait(i) for i in range(1, 11)]
        gate.release()
        assert first.result(DEADLINE) == 0
        assert [f.result(DEADLINE) for f in rest] == [2 * i for i in range(1, 11)]
    assert gate.batches == [[0], list(range(1, 11))]
    assert batcher.stats() == {"batches": 2, "items": 11, "largest": 10, "mean_size": 5.5}


def test_many_threads_get_their_own_results_in_batches_of_at_most_max():
    gate, n = Gate(), 48  # three full batches: with an hour's window only a full batch runs
    enqueued = threading.Barrier(n + 1)
    results: dict[int, int] = {}

    def caller(i):
        future = batcher.submit_nowait(i)
        enqueued.wait(DEADLINE)
        results[i] = future.result(DEADLINE)

    with MicroBatcher(gate, window_s=3600, max_batch=16) as batcher:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        enqueued.wait(DEADLINE)  # every item is queued; the first batch (16, window cut short) holds the rest
        gate.release()
        for t in threads:
            t.join(DEADLINE)
    assert results == {i: 2 * i for i in range(n)}
    assert [len(b) for b in gate.batches] == [16, 16, 16]
    assert sorted(x for b in gate.batches for x in b) == list(range(n))


def test_blocking_submit_from_threads():
    gate = Gate(hold=False)
    out = [None] * 24
    with MicroBatcher(gate, window_s=0.001, max_batch=8) as batcher:
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, batcher.submit(i))) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
    assert out == [2 * i for i in range(24)]
    assert all(len(b) <= 8 for b in gate.batches)


def test_a_full_batch_does_not_wait_for_the_window():
    gate = Gate(hold=False)
    with MicroBatcher(gate, window_s=3600, max_batch=3) as batcher:
        futures = [batcher.submit_nowait(i) for i in range(3)]
        assert [f.result(DEADLINE) for f in futures] == [0, 2, 4]  # an hour's window, cut short by the max
    assert gate.batches == [[0, 1, 2]]


def test_a_lone_item_waits_the_window_and_no_longer():
    gate, window = Gate(hold=False), 0.05
    with MicroBatcher(gate, window_s=window, max_batch=32) as batcher:
        start = time.monotonic()
        assert batcher.submit(7) == 14
        waited = time.monotonic() - start
    assert gate.batches == [[7]]
    assert window <= waited < window + DEADLINE


def test_a_batch_error_reaches_every_caller_of_that_batch_only():
    def fn(x):
        if x == "bad":
            raise ValueError("the batch function failed")
        return x.upper()

    gate = Gate(fn)
    with MicroBatcher(gate, window_s=0, max_batch=32) as batcher:
        first = batcher.submit_nowait("ok")
        assert gate.entered.wait(DEADLINE)
        doomed = [batcher.submit_nowait(x) for x in ("a", "bad", "b")]
        gate.release()
        assert first.result(DEADLINE) == "OK"
        for future in doomed:
            with pytest.raises(ValueError, match="the batch function failed"):
                future.result(DEADLINE)
        assert batcher.submit("c") == "C"  # the batcher goes on after a failed batch


def test_a_result_count_that_does_not_match_is_an_error_for_all():
    with MicroBatcher(lambda items: items[:-1], window_s=0) as batcher:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            batcher.submit(1)


def test_close_fails_waiting_items_and_lets_the_running_batch_finish():
    gate = Gate()
    batcher = MicroBatcher(gate, window_s=0, max_batch=32)
    running = batcher.submit_nowait(1)
    assert gate.entered.wait(DEADLINE)
    waiting = [batcher.submit_nowait(i) for i in (2, 3)]
    batcher.close(timeout=0)  # the worker is inside the blocked batch: do not wait for it here
    for future in waiting:
        with pytest.raises(BatcherClosed):
            future.result(DEADLINE)
    with pytest.raises(BatcherClosed):
        batcher.submit(4)
    gate.release()
    assert running.result(DEADLINE) == 2
    batcher.close()  # again: joins the worker
    assert not batcher._worker.is_alive()
    assert gate.batches == [[1]]


def test_close_wakes_an_idle_worker():
    batcher = MicroBatcher(lambda items: items, window_s=3600)
    batcher.close()
    assert not batcher._worker.is_alive()


def test_on_batch_sees_each_size_and_a_failing_hook_fails_no_caller():
    sizes = []
    gate = Gate()
    with MicroBatcher(gate, window_s=0, on_batch=sizes.append) as batcher:
        first = batcher.submit_nowait(0)
        assert gate.entered.wait(DEADLINE)
        rest = [batcher.submit_nowait(i) for i in range(1, 5)]
        gate.release()
        [f.result(DEADLINE) for f in [first, *rest]]
    assert sizes == [1, 4]

    def broken(size):
        raise RuntimeError("metrics are down")

    with MicroBatcher(lambda items: items, window_s=0, on_batch=broken) as batcher:
        assert batcher.submit(5) == 5


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, max_batch=0)
    with pytest.raises(ValueError, match="window_s"):
        MicroBatcher(lambda items: items, window_s=-1)


# --- CLIP: batched rows equal unbatched rows -----------------------------------------------------

@pytest.fixture(scope="module")
def clip():
    return load_clip("ViT-B-32", "none", "cpu")


@pytest.fixture(scope="module")
def pictures():
    return [render_thumbnail(niche, f"vid{i}") for i, niche in enumerate(["tech", "gaming", "education"] * 3)]


TITLES = ["I built a keyboard", "a much longer title about building a mechanical keyboard from scratch, " * 3,
          "x", "cooking pasta", "", "speedrun world record", "mod 9", "review", "unboxing"]


def test_clip_rows_do_not_depend_on_the_batch(clip, pictures):
    """A batch made of the others' items (held behind the model lock) gives each the row it gets alone."""
    alone_images = np.stack([embed_images(clip, [p])[0] for p in pictures])
    alone_texts = np.stack([embed_texts(clip, [t])[0] for t in TITLES])
    sizes = []
    with ClipBatchers(clip, window_s=0, max_batch=32, on_batch=lambda tower, n: sizes.append((tower, n))) as batchers:
        assert batchers.trims_text  # text batches stop at their longest title: the rows must not change
        with clip.lock:  # nothing runs until every item is queued: one batch per tower
            images = [batchers.embed_image_soon(p) for p in pictures]
            texts = [batchers.embed_text_soon(t) for t in TITLES]
        batched_images = np.stack([f.result(DEADLINE) for f in images])
        batched_texts = np.stack([f.result(DEADLINE) for f in texts])
    np.testing.assert_allclose(batched_images, alone_images, atol=1e-5)
    np.testing.assert_allclose(batched_texts, alone_texts, atol=1e-5)
    assert batched_images.dtype == np.float32
    # the first item of each tower may have started alone before the lock was taken; the rest are one batch
    assert sum(n for tower, n in sizes if tower == IMAGE) == len(pictures)
    assert sum(n for tower, n in sizes if tower == TEXT) == len(TITLES)
    assert max(n for tower, n in sizes if tower == IMAGE) >= len(pictures) - 1


def test_clip_batchers_from_threads_and_a_bad_image_fails_only_its_caller(clip, pictures):
    expected = embed_images(clip, pictures)
    out: dict = {}

    def embed(i, picture):
        try:
            out[i] = batchers.embed_image(picture)
        except Exception as exc:  # the bad one: its own error, in its own thread
            out[i] = exc

    with ClipBatchers(clip, window_s=0.005, max_batch=4) as batchers:
        items = [*pictures, "not an image"]
        threads = [threading.Thread(target=embed, args=(i, p)) for i, p in enumerate(items)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        np.testing.assert_allclose(batchers.embed_text("a title"), embed_texts(clip, ["a title"])[0], atol=1e-5)
    assert not isinstance(out[len(pictures)], np.ndarray)
    np.testing.assert_allclose(np.stack([out[i] for i in range(len(pictures))]), expected, atol=1e-5)
    stats = batchers.stats()
    assert stats[IMAGE]["items"] == len(pictures) and stats[IMAGE]["largest"] <= 4
    assert stats[TEXT]["items"] == 1


def test_text_batches_stop_at_the_longest_text_without_changing_a_row(clip):
    """Short titles alone, beside a 77-token one, and the untrimmed forward all give the same rows."""
    titles = ["hi", "a title of a few more words", "long " * 100]
    with ClipBatchers(clip, window_s=0) as batchers:
        with clip.lock:
            together = [batchers.embed_text_soon(t) for t in titles]
        rows = np.stack([f.result(DEADLINE) for f in together])
        short = np.stack([batchers.embed_text(t) for t in titles[:2]])
    np.testing.assert_allclose(rows, embed_texts(clip, titles), atol=1e-5)
    np.testing.assert_allclose(short, embed_texts(clip, titles[:2]), atol=1e-5)


def test_the_split_preprocessing_is_the_preprocessing(clip, pictures):
    """PIL steps in the caller, tensor steps with the batch: step for step the model's own preprocessing."""
    import torch

    pil_steps, tensor_steps = split_preprocess(clip.preprocess)
    halfway = pil_steps(pictures[0].resize((1280, 720)))
    assert isinstance(halfway, Image.Image)
    assert torch.equal(tensor_steps(halfway), clip.preprocess(pictures[0].resize((1280, 720))))
    with pytest.raises(TypeError):  # a bad image fails in the PIL steps, in its caller's thread
        pil_steps("not an image")

    def plain(image):
        return image

    assert split_preprocess(plain)[0] is plain  # not a Compose: all of it runs in the caller


def test_only_a_causal_argmax_text_tower_is_trimmed(clip):
    import copy

    assert trims_text(clip.model)
    assert not trims_text(object())
    other = copy.copy(clip.model)
    other.text_pool_type = "first"  # the row is not read at the end of the text: every position counts
    assert not trims_text(other)


def test_clip_batchers_refuse_after_close(clip):
    batchers = ClipBatchers(clip)
    batchers.close()
    with pytest.raises(BatcherClosed):
        batchers.embed_image(Image.new("RGB", (64, 64)))
    with pytest.raises(BatcherClosed):
        batchers.embed_text("late")
