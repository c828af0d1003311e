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
    """A search the library falls back to when the local index cannot answer (e.g. a shared table)."""

    name: str

    def similarity_percentile(self, vector: np.ndarray, name: str, k: int, weight: str | None) -> float: ...

    def similar(self, vector: np.ndarray, name: str, k: int) -> list[dict]: ...


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
