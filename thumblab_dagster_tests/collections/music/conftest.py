"""Music fixtures: a fresh Postgres database per test (the session pgserver) and a music folder writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from thumblab_dagster.lib.collections.music.store import MusicStore, sqlalchemy_url
from thumblab_dagster.lib.collections.music.synthetic import synthesise_track


@pytest.fixture
def music_db_url(db_url) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) of an empty database of its own, on the session pgserver."""
    return sqlalchemy_url(db_url).render_as_string(hide_password=False)


@pytest.fixture
def music_store(music_db_url):
    """A ``MusicStore`` on a fresh database, schema created."""
    with MusicStore(music_db_url) as store:
        store.create_schema()
        yield store


class MusicFolder:
    """A music folder under a test's temp dir; ``write`` puts a short synthetic track in it."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, relative: str, *, seconds: float = 1.0, sample_rate: int = 22050, **track) -> Path:
        """Write ``relative`` (.wav/.flac/.ogg) with ``synthesise_track``'s keywords (tempo_bpm, key, scale,
        style, seed, title, artist, album); short and low-rate by default: most tests need bytes, not music."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return synthesise_track(path, seconds=seconds, sample_rate=sample_rate, **track)


@pytest.fixture
def music_folder(tmp_path) -> MusicFolder:
    return MusicFolder(tmp_path / "music")
