"""Pictures of a niche index for the UI: sampled thumbnails beside their nearest neighbours."""

from __future__ import annotations

import logging

import pandas as pd

from thumblab_dagster.lib.collections.thumbnails import sample_source
from thumblab_dagster.lib.collections.thumbnails.layout import DataLayout
from thumblab_dagster.lib.embed.images import fetch_images
from thumblab_dagster.lib.engine.index_dir import METADATA_FILE, load_index_dir
from thumblab_dagster.lib.engine.sheet import neighbour_sheet

log = logging.getLogger(__name__)


def niche_neighbour_sheet(layout: DataLayout, niche: str, date: str, *, rows: int = 4, k: int = 4,
                          timeout_s: float = 5.0) -> bytes | None:
    """A contact sheet of ``rows`` sampled thumbnails of the niche's index and their ``k`` neighbours.

    Thumbnails are fetched from their URLs (drawn for the sample source); one that cannot be
    fetched shows as an empty tile, never fails the stats.
    """
    directory = layout.index_dir(niche, date)
    loaded = load_index_dir(directory)
    if not (directory / METADATA_FILE).exists():
        return None
    meta = pd.read_parquet(directory / METADATA_FILE, columns=["video_id", "thumbnail_url"])
    urls, ids = meta["thumbnail_url"].astype(str).tolist(), meta["video_id"].astype(str).tolist()

    def images(positions):
        fetched = fetch_images([urls[p] for p in positions], max_workers=8, timeout_s=timeout_s,
                               schemes=sample_source.FETCH_SCHEMES)
        for p, result in zip(positions, fetched):
            if not result.ok:
                log.info("neighbour sheet: thumbnail of %s not shown (%s)", ids[p], result.error)
        return [r.image for r in fetched]

    return neighbour_sheet(loaded, images, lambda p: ids[p], rows=rows, k=k)
