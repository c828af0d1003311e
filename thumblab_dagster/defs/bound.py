"""The resources a definitions load binds, for the folders whose shape depends on them.

``thumblab_dagster.definitions.build_definitions(resources)`` sets them while ``defs/`` is
autoloaded; without that (``dg``, ``dagster dev``) they come from the environment. Supabase's
folder contributes only when a Supabase resource is bound, the upload only with an upload URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_bound: ContextVar[dict | None] = ContextVar("thumblab_bound_resources", default=None)


def bound_resources() -> dict:
    resources = _bound.get()
    if resources is None:  # loaded by a tool without build_definitions: read the environment now
        from thumblab_dagster.defs.resources import resources_from_env

        resources = resources_from_env()
    return resources


@contextlib.contextmanager
def binding(resources: dict) -> Iterator[dict]:
    token = _bound.set(resources)
    try:
        yield resources
    finally:
        _bound.reset(token)


def index_reads_store(resources: dict) -> bool:
    """The index is built from Supabase's table (THUMBLAB_INDEX_SOURCE=supabase)."""
    engine = resources.get("index_engine")
    return engine is not None and getattr(engine, "source", "parquet") == "supabase"
