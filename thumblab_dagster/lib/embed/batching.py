"""Cross-request micro-batching: many threads each submit one item; one forward serves them all.

A CLIP forward of 8 images costs far less than 8 forwards of one, so the scoring service collects
the items that arrive within a short window (``window_s``, from the first item's arrival) or until
``max_batch`` items wait, runs the batch function once on all of them, and hands each caller its
row. While a batch runs, new items pile up and form the next batch at once (their window has
passed), so batches grow with the load and a lone request waits at most the window.

``MicroBatcher`` is generic; ``ClipBatchers`` is the pair the service uses (image and text towers
batched separately). An image's PIL preprocessing (resize, crop) runs in its caller's thread, so
that work spreads over the callers and an image that cannot be preprocessed fails only its own
caller; its tensor steps run with the batch (``split_preprocess`` says why). An error of the batch
function itself reaches every caller of that batch. Text batches stop at their longest text
(``trims_text``), which makes titles several times cheaper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from thumblab_dagster.lib.embed.clip import LoadedClip, embed_images, embed_texts
from thumblab_dagster.lib.settings import SETTING

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Declared in lib/settings.py (THUMBLAB_BATCH_*); these are the defaults for direct callers.
DEFAULT_WINDOW_S = SETTING["batch_window_ms"].default / 1000
DEFAULT_MAX_BATCH = SETTING["batch_max"].default
IMAGE, TEXT = "image", "text"  # the towers, as ``on_batch`` and ``stats()`` name them


class BatcherClosed(RuntimeError):
    """The batcher was closed before this item ran (the service is shutting down)."""


@dataclass
class _Waiting(Generic[T]):
    item: T
    arrived: float  # time.monotonic() at submit: the window of the batch it starts
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest": self.largest,
                "mean_size": round(self.items / self.batches, 3) if self.batches else None}


class MicroBatcher(Generic[T, R]):
    """Run ``batch_fn`` on items submitted by many threads, a batch at a time, on one worker thread.

    ``batch_fn(items)`` returns one result per item, in order. ``submit(item)`` blocks until its
    batch ran and returns that item's result, or raises the batch's error. ``on_batch(size)`` is
    called once per batch before its callers are woken (e.g. to record batch sizes).
    """

    def __init__(self, batch_fn: Callable[[list[T]], Sequence[R]], *, window_s: float = DEFAULT_WINDOW_S,
                 max_batch: int = DEFAULT_MAX_BATCH, on_batch: Callable[[int], None] | None = None,
                 name: str = "batch"):
        if window_s < 0:
            raise ValueError(f"window_s must be at least 0, got {window_s}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.batch_fn, self.window_s, self.max_batch, self.on_batch = batch_fn, window_s, max_batch, on_batch
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[_Waiting[T]] = deque()
        self._closed = False
        self._stats = BatchStats()
        self._worker = threading.Thread(target=self._work, name=f"{name}-batcher", daemon=True)
        self._worker.start()

    # --- callers ---------------------------------------------------------------------------

    def submit_nowait(self, item: T) -> Future:
        """Queue ``item``; a future of its result (``BatcherClosed`` once closed)."""
        waiting = _Waiting(item, time.monotonic())
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"the {self.name} batcher is closed")
            self._queue.append(waiting)
            # Wake the worker only when it has something to decide: a first item starts a window,
            # a full batch ends one early. Items in between just wait for the window to pass.
            if len(self._queue) == 1 or len(self._queue) == self.max_batch:
                self._cond.notify()
        return waiting.future

    def submit(self, item: T) -> R:
        """``item``'s result, once its batch ran (blocks the calling thread)."""
        return self.submit_nowait(item).result()

    def stats(self) -> dict:
        """Batches run, items served, the largest batch and the mean batch size so far."""
        with self._cond:
            return self._stats.as_dict()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new items, fail the waiting ones with ``BatcherClosed``; a batch already running
        finishes and answers its callers. Waits up to ``timeout`` for the worker to stop."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for waiting in dropped:
            waiting.future.set_exception(BatcherClosed(f"the {self.name} batcher closed before this item ran"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Waiting[T]] | None:
        """Wait for a first item, then until its window passes or a full batch waits; None once closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].arrived + self.window_s
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            return [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]

    def _run(self, batch: list[_Waiting[T]]) -> None:
        try:
            results = self.batch_fn([waiting.item for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the {self.name} batch function returned {len(results)} results "
                                   f"for {len(batch)} items")
        except Exception as exc:  # every caller of this batch gets the batch's error
            outcome: Exception | Sequence[R] = exc
        else:
            outcome = results
        self._record(len(batch))
        for i, waiting in enumerate(batch):
            if isinstance(outcome, Exception):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome[i])

    def _record(self, size: int) -> None:
        with self._cond:
            self._stats.batches += 1
            self._stats.items += size
            self._stats.largest = max(self._stats.largest, size)
        if self.on_batch is not None:
            try:
                self.on_batch(size)
            except Exception:  # a broken metrics hook must not fail the callers
                log.exception("%s batcher: on_batch hook failed", self.name)


# --- CLIP's two towers ------------------------------------------------------------------------

def _as_is(pixels):
    return pixels


def split_preprocess(preprocess: Callable) -> tuple[Callable, Callable]:
    """``preprocess`` as (its PIL steps, its tensor steps): ``tensor_steps(pil_steps(image))`` is
    ``preprocess(image)``, step for step.

    The PIL steps (resize, crop: the costly part, and where a bad image fails) run in the callers'
    threads; the tensor steps run on the batch's worker thread. Torch ops called from many threads
    each start their own OpenMP team, and on few cores those teams fight the forward for the CPU
    (on 2 busy cores to-tensor and normalise took ~40 ms of wall time each; the whole preprocessing
    takes ~9 ms of CPU on one thread). Found by running a probe image through a torchvision
    ``Compose``; any other preprocessing runs whole in the callers' threads."""
    from torchvision.transforms import Compose

    steps = getattr(preprocess, "transforms", None)
    if not isinstance(preprocess, Compose) or not steps:
        return preprocess, _as_is
    probe: object = Image.new("RGB", (256, 256), (127, 127, 127))
    for i, step in enumerate(steps):
        probe = step(probe)
        if not isinstance(probe, Image.Image):  # the first step that leaves PIL: the tensor steps start here
            return Compose(steps[:i]), Compose(steps[i:])
    return preprocess, _as_is


def _image_rows(clip: LoadedClip, tensor_steps: Callable, pictures: list) -> list[np.ndarray]:
    # embed_images itself, its preprocessing reduced to the steps the callers have not run: the
    # forward (device, precision, normalisation, the model lock) stays defined once, in clip.py.
    return list(embed_images(replace(clip, preprocess=tensor_steps), pictures, batch_size=len(pictures)))


def trims_text(model) -> bool:
    """True for open_clip's ``CLIP`` text tower: causal attention, and each text's row read at its
    end-of-text token (argmax pooling). Then no token after the batch's longest text can change a
    row, and the forward may stop there instead of running all 77 positions."""
    try:
        import torch
        from open_clip.model import CLIP
    except ImportError:
        return False
    mask = getattr(model, "attn_mask", None)
    if getattr(type(model), "encode_text", None) is not CLIP.encode_text or getattr(model, "text_pool_type", None) != "argmax" \
            or not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return False
    return torch.equal(torch.isinf(mask), torch.ones_like(mask, dtype=torch.bool).triu(1))  # exactly causal


def _trimmed_text_forward(clip: LoadedClip, texts: list[str]) -> np.ndarray:
    """``embed_texts`` for open_clip's CLIP, up to the batch's longest text only (titles are a few
    tokens of 77: most of the text tower's work). Mirrors ``CLIP.encode_text`` with the positional
    embedding and the causal mask cut to that length; the rows agree with ``embed_texts`` within
    float rounding (the tests hold them to 1e-5)."""
    import torch
    from open_clip.transformer import text_global_pool

    model = clip.model
    tokens = clip.tokenizer(list(texts))
    length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
    tokens = tokens[:, :length].to(clip.device)
    with clip.lock, torch.inference_mode():
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, model.text_pool_type)
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


def _text_rows(clip: LoadedClip, texts: list[str], trim: bool = False) -> list[np.ndarray]:
    rows = _trimmed_text_forward(clip, texts) if trim else embed_texts(clip, texts, batch_size=len(texts))
    return list(rows)


class ClipBatchers:
    """One micro-batcher per CLIP tower over one loaded model.

    ``embed_image`` / ``embed_text`` return the same row as ``embed_images(clip, [image])[0]`` /
    ``embed_texts(clip, [text])[0]`` (in eval mode a row does not depend on the rest of its batch,
    and texts are always padded to the context length; rows agree within float rounding, ~1e-7).
    Text batches of open_clip's CLIP stop at their longest text (``trims_text``). A bf16 model's rows
    move with the batch's shape by bf16 rounding (~2e-3 per component, cosine to fp32 still > 0.9999).
    ``on_batch(tower, size)`` sees every batch (``IMAGE`` or ``TEXT``).
    """

    def __init__(self, clip: LoadedClip, *, window_s: float = DEFAULT_WINDOW_S, max_batch: int = DEFAULT_MAX_BATCH,
                 on_batch: Callable[[str, int], None] | None = None):
        self.clip = clip
        self._pil_steps, tensor_steps = split_preprocess(clip.preprocess)
        hook = (lambda tower: partial(on_batch, tower)) if on_batch is not None else (lambda tower: None)
        self.images: MicroBatcher = MicroBatcher(partial(_image_rows, clip, tensor_steps), window_s=window_s,
                                                 max_batch=max_batch, on_batch=hook(IMAGE), name=f"clip-{IMAGE}")
        self.trims_text = trims_text(clip.model)
        self.texts: MicroBatcher = MicroBatcher(partial(_text_rows, clip, trim=self.trims_text), window_s=window_s,
                                                max_batch=max_batch, on_batch=hook(TEXT), name=f"clip-{TEXT}")

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """The image's L2-normalised embedding; its PIL preprocessing runs here, in the caller's thread."""
        return self.embed_image_soon(image).result()

    def embed_image_soon(self, image: Image.Image) -> Future:
        """``embed_image`` without waiting for the batch: the future of its row."""
        return self.images.submit_nowait(self._pil_steps(image))

    def embed_text(self, text: str) -> np.ndarray:
        """The text's L2-normalised embedding through CLIP's text tower."""
        return self.texts.submit(text)

    def embed_text_soon(self, text: str) -> Future:
        """``embed_text`` without waiting: the future of its row (start a title, fetch the images meanwhile)."""
        return self.texts.submit_nowait(text)

    def stats(self) -> dict:
        return {IMAGE: self.images.stats(), TEXT: self.texts.stats()}

    def close(self, timeout: float | None = None) -> None:
        self.images.close(timeout)
        self.texts.close(timeout)

    def __enter__(self) -> ClipBatchers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
