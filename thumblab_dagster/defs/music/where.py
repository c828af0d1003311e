"""What every music asset, check and sensor starts from: the layout, the store, the build settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from thumblab_dagster.lib.collections.music.layout import DEFAULT_LIBRARY, MusicLayout
from thumblab_dagster.lib.collections.music.pipeline import MusicSettings, open_store
from thumblab_dagster.lib.collections.music.store import MusicStore, MusicStoreError

GROUP = "music"
OWNERS = ["team:thumblab"]
TAGS = {"collection": "music"}
LIBRARY = DEFAULT_LIBRARY          # the library the audio pipeline builds
RESOURCES = frozenset({"storage", "index_engine", "music"})


def layout_and_settings(context) -> tuple[MusicLayout, MusicSettings]:
    resources = context.resources
    return resources.music.layout(resources.storage), resources.music.settings(resources.index_engine)


@contextlib.contextmanager
def music_store(context) -> Iterator[tuple[MusicLayout, MusicStore, MusicSettings]]:
    """(layout, store, settings); a database that cannot be reached is a Failure with its one line."""
    layout, settings = layout_and_settings(context)
    try:
        store = open_store(layout, context.resources.music.db_url)
    except MusicStoreError as exc:
        raise dg.Failure(description=str(exc), allow_retries=True) from exc
    try:
        yield layout, store, settings
    finally:
        store.close()
