"""The local -> remote -> default chain, written once; every query goes through ``answer``.

1. The local index answers, or says why it cannot (``IndexUnavailable``).
2. The remote (when there is one, and the name is one the library serves) answers instead; the
   reason names both the local problem and the remote. Any remote failure becomes the next step.
3. The default answers, with the whole story as its reason.

The caller's own mistakes (another dimension, an unknown weight) are not fallbacks: they raise.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from thumblab_dagster.lib.query.results import IndexUnavailable, UnknownName

log = logging.getLogger(__name__)


class RemoteSearch(Protocol):
    """A search the library falls back to when the local index cannot answer (e.g. a shared table).

    It may also offer ``reference_count(name, k) -> int``: how many references its percentiles are
    ranked against (its sample), so a remote answer is flagged when that is too few.
    """

    name: str

    def similarity_percentile(self, vector: np.ndarray, name: str, k: int, weight: str | None) -> float: ...

    def similar(self, vector: np.ndarray, name: str, k: int) -> list[dict]: ...


def remote_reference_count(remote: RemoteSearch, name: str, k: int) -> int | None:
    """The remote's sample size for ``name``, or None when it does not say (or cannot now)."""
    count = getattr(remote, "reference_count", None)
    if count is None:
        return None
    try:
        return int(count(name, k))
    except Exception as exc:  # the percentile is already answered: an unknown count must not undo it
        log.warning("%s: %s could not say how many references it holds: %s: %s", name, remote.name,
                    type(exc).__name__, exc)
        return None


def remote_why(exc: Exception) -> str:
    """A remote failure for a reason field (which HTTP clients see): what kind, not hosts or SQL."""
    return str(exc) if isinstance(exc, (LookupError, ValueError)) else f"{type(exc).__name__}; see the service log"


def answer(name: str, local, *, default, note: str, remote: RemoteSearch | None = None, ask=None,
           verb: str = "answered"):
    """The first of ``local()``, ``ask(remote, reason)``, ``default(reason)`` that answers.

    ``verb`` tells how the remote helped ("scored", "searched"); ``note`` what the default gives.
    """
    try:
        return local()
    except IndexUnavailable as exc:
        why, served = str(exc), not isinstance(exc, UnknownName)
    if remote is not None and ask is not None and served:
        reason = f"{why}; {verb} by {remote.name}"
        try:
            result = ask(remote, reason)
        except Exception as exc:  # any remote failure becomes the next fallback, never the caller's
            log.warning("%s: %s failed: %s: %s", name, remote.name, type(exc).__name__, exc)
            why = f"{why}; {remote.name} failed ({remote_why(exc)})"
        else:
            log.warning("%s: %s", name, reason)
            return result
    reason = f"{why}; {note}"
    log.warning("%s: %s", name, reason)
    return default(reason)
