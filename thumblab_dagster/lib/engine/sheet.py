"""A neighbour sheet: a few sampled rows of an index with their nearest neighbours, as one PNG.

A person judges an index faster by looking than by reading numbers: each line of the sheet is a
sampled row (framed) followed by its ``k`` nearest neighbours, each captioned with its label and
cosine similarity. The caller says how a row looks (``images``) and what it is called (``label``),
so any collection with pictures can use it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

TILE = 112          # side of each picture's square tile, in image units
CAPTION = 28        # room under each picture for two caption lines
GAP = 6
QUERY_FRAME = (79, 111, 216)


def _tile(image: Image.Image | None) -> Image.Image:
    """The picture letterboxed into a square tile (grey with a cross when it could not be loaded)."""
    tile = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    if image is None:
        draw = ImageDraw.Draw(tile)
        draw.line((0, 0, TILE, TILE), fill=(190, 190, 190))
        draw.line((0, TILE, TILE, 0), fill=(190, 190, 190))
        return tile
    picture = image.convert("RGB")
    picture.thumbnail((TILE, TILE))
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return tile


def neighbour_sheet(loaded, images: Callable[[Sequence[int]], list[Image.Image | None]],
                    label: Callable[[int], str], *, rows: int = 4, k: int = 4, seed: int = 0) -> bytes | None:
    """PNG of ``rows`` sampled positions and their ``k`` nearest other positions; None when empty.

    ``loaded`` is a loaded index (``ntotal``, ``reconstruct``, ``search``); ``images(positions)``
    returns one picture (or None) per position; ``label(position)`` a short caption.
    """
    n = int(loaded.ntotal)
    if n < 2:
        return None
    sampled = np.sort(np.random.default_rng(seed).choice(n, size=min(rows, n), replace=False))
    lines: list[list[tuple[int, float | None]]] = []
    for position in sampled:
        query = np.asarray(loaded.reconstruct(int(position)), dtype=np.float32)[None, :]
        sims, found = loaded.search(query, min(k + 1, n))
        neighbours = [(int(p), float(s)) for s, p in zip(sims[0], found[0]) if p >= 0 and p != position][:k]
        lines.append([(int(position), None), *neighbours])
    wanted = sorted({p for line in lines for p, _ in line})
    pictures = dict(zip(wanted, images(wanted)))
    width = (k + 1) * (TILE + GAP) + GAP
    height = len(lines) * (TILE + CAPTION + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, line in enumerate(lines):
        y = GAP + r * (TILE + CAPTION + GAP)
        for c, (position, similarity) in enumerate(line):
            x = GAP + c * (TILE + GAP)
            sheet.paste(_tile(pictures.get(position)), (x, y))
            if similarity is None:  # the sampled row itself
                draw.rectangle((x - 2, y - 2, x + TILE + 1, y + TILE + 1), outline=QUERY_FRAME, width=3)
            caption = "sampled" if similarity is None else f"cos {similarity:.3f}"
            draw.text((x, y + TILE + 2), str(label(position))[:18], fill=(40, 40, 40), font=font)
            draw.text((x, y + TILE + 14), caption, fill=(90, 90, 90), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
