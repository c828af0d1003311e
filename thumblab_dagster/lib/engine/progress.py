"""Progress of long engine work: an INFO line on the stage's module logger (all under
``thumblab_dagster.lib``, which the Dagster code location forwards to the run's event log) and,
when the caller passed one, a ``progress(stage, message)`` callable (a CLI bar)."""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[str, str], None]


def report(logger: logging.Logger, progress: Progress | None, stage: str, message: str) -> None:
    logger.info(message)
    if progress is not None:
        progress(stage, message)
