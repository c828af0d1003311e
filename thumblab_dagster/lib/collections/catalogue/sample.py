"""A deterministic, offline product catalogue: a few hundred products of several brands and colours.

Every attribute of a product follows from its id alone, and its picture is drawn in-process with PIL
(``sample-product://<id>.png``: the category's silhouette in the product's colour, with a brand mark and
a per-product pattern), so the catalogue, its images and their embeddings are the same on every run.
``sample_catalogue(n)`` is a prefix of ``sample_catalogue(n + k)``: growing ``n`` adds new products.
A ``?v=<n>`` query draws another version of the same product's picture (an image that changed).
"""

from __future__ import annotations

import hashlib
import io
import random
from urllib.parse import parse_qs, urlparse

import pandas as pd
from PIL import Image, ImageDraw

SAMPLE_SCHEME = "sample-product"
IMAGE_SIZE = (128, 128)  # small: CLIP looks at 224 px anyway, and tests draw hundreds

BRANDS = ("aw", "northwind", "tasman", "bluegum", "kestrel")
COLOURS = {
    "red": (200, 40, 40), "blue": (40, 80, 200), "green": (40, 150, 70), "yellow": (230, 200, 40),
    "black": (30, 30, 30), "white": (250, 250, 250), "orange": (240, 130, 30), "purple": (130, 60, 170),
}
CATEGORIES = ("t-shirt", "shoe", "bag", "hat", "mug", "bottle", "lamp")
_BRAND_MARKS = {"aw": "circle", "northwind": "triangle", "tasman": "square", "bluegum": "diamond",
                "kestrel": "bar"}
_BRAND_INK = {"aw": (220, 30, 60), "northwind": (20, 60, 120), "tasman": (0, 130, 110), "bluegum": (60, 110, 200),
              "kestrel": (110, 70, 30)}

# Silhouettes in a unit box (x right, y down), drawn as polygons / ellipses / rectangles.
_SHAPES: dict[str, list[tuple]] = {
    "t-shirt": [("polygon", [(0.3, 0.2), (0.42, 0.15), (0.5, 0.21), (0.58, 0.15), (0.7, 0.2), (0.87, 0.36),
                             (0.76, 0.44), (0.7, 0.38), (0.7, 0.86), (0.3, 0.86), (0.3, 0.38), (0.24, 0.44),
                             (0.13, 0.36)])],
    "shoe": [("polygon", [(0.12, 0.56), (0.17, 0.38), (0.34, 0.4), (0.5, 0.54), (0.8, 0.6), (0.88, 0.7),
                          (0.86, 0.76), (0.12, 0.76)])],
    "bag": [("arc", (0.34, 0.18, 0.66, 0.6)), ("rectangle", (0.22, 0.4, 0.78, 0.86))],
    "hat": [("chord", (0.28, 0.26, 0.72, 0.9)), ("ellipse", (0.12, 0.56, 0.88, 0.7))],
    "mug": [("ring", (0.56, 0.4, 0.82, 0.68)), ("rectangle", (0.26, 0.3, 0.64, 0.82))],
    "bottle": [("rectangle", (0.44, 0.12, 0.56, 0.36)), ("rectangle", (0.36, 0.34, 0.64, 0.88))],
    "lamp": [("polygon", [(0.36, 0.16), (0.64, 0.16), (0.76, 0.44), (0.24, 0.44)]),
             ("rectangle", (0.48, 0.44, 0.52, 0.8)), ("ellipse", (0.3, 0.78, 0.7, 0.88))],
}


def _hash_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _pick(options, *parts):
    return options[_hash_int(*parts) % len(options)]


def product_id(serial: int, seed: int = 0) -> str:
    """The id of the ``serial``-th sample product (another ``seed``, other ids: the picture follows the id)."""
    return f"p{serial:05d}" if seed == 0 else f"s{seed}-p{serial:05d}"


def attributes(pid: str) -> dict:
    """A sample product's brand, colour, category, title and price, from its id alone."""
    brand, colour = _pick(BRANDS, pid, "brand"), _pick(list(COLOURS), pid, "colour")
    category = _pick(CATEGORIES, pid, "category")
    price = round(4.99 + (_hash_int(pid, "price") % 19_000) / 100, 2)
    return {"brand": brand, "colour": colour, "category": category,
            "title": f"{brand.title()} {colour} {category}", "price": price}


def sample_catalogue(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """``n`` sample products: id, image_url, brand, colour, category, title, price (str/float columns)."""
    if n < 0:
        raise ValueError(f"a sample catalogue of {n} products: use a count of 0 or more")
    rows = []
    for serial in range(n):
        pid = product_id(serial, seed)
        rows.append({"id": pid, "image_url": f"{SAMPLE_SCHEME}://{pid}.png", **attributes(pid)})
    columns = ["id", "image_url", "brand", "colour", "category", "title", "price"]
    return pd.DataFrame(rows, columns=columns).astype({"price": "float64"})


def _parse(url: str) -> tuple[str, str]:
    """(product id, picture version) of a ``sample-product://<id>.png[?v=<n>]`` URL, or ValueError."""
    parts = urlparse(url)
    name = (parts.netloc + parts.path).strip("/")
    pid = name[:-4] if parts.scheme == SAMPLE_SCHEME and name.endswith(".png") else ""
    if not pid:
        raise ValueError(f"not a sample product image URL: {url!r} (use {SAMPLE_SCHEME}://<id>.png)")
    return pid, parse_qs(parts.query).get("v", ["1"])[0]


def _shade(rgb: tuple, by: int) -> tuple:
    return tuple(max(0, min(255, c + by)) for c in rgb)


def sample_image(url: str) -> Image.Image:
    """Draw a sample product's picture: same URL, same picture."""
    pid, version = _parse(url)
    attrs = attributes(pid)
    rng = random.Random(_hash_int(pid, version, "img"))
    w, h = IMAGE_SIZE
    background = tuple(rng.randrange(218, 246) for _ in range(3))
    img = Image.new("RGB", IMAGE_SIZE, background)
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.18, h * 0.84, w * 0.82, h * 0.95], fill=_shade(background, -40))  # floor shadow
    colour = COLOURS[attrs["colour"]]
    outline = _shade(colour, -70 if sum(colour) > 300 else 60)
    scale, dx, dy = rng.uniform(0.8, 1.05), rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.04)

    def at(x: float, y: float) -> tuple[float, float]:
        return ((0.5 + (x - 0.5) * scale + dx) * w, (0.5 + (y - 0.5) * scale + dy) * h)

    def box(b) -> list[float]:
        return [*at(b[0], b[1]), *at(b[2], b[3])]

    for kind, geometry in _SHAPES[attrs["category"]]:
        if kind == "polygon":
            draw.polygon([at(x, y) for x, y in geometry], fill=colour, outline=outline, width=2)
        elif kind == "rectangle":
            draw.rectangle(box(geometry), fill=colour, outline=outline, width=2)
        elif kind == "ellipse":
            draw.ellipse(box(geometry), fill=colour, outline=outline, width=2)
        elif kind == "chord":
            draw.chord(box(geometry), 180, 360, fill=colour, outline=outline, width=2)
        elif kind == "arc":
            draw.arc(box(geometry), 180, 360, fill=outline, width=max(3, int(w * 0.04)))
        else:  # ring: a handle
            draw.ellipse(box(geometry), outline=colour, width=max(3, int(w * 0.05)))
    _pattern(draw, rng, at, _shade(colour, -45 if sum(colour) > 300 else 45))
    _brand_mark(draw, attrs["brand"], w, h)
    return img


def _pattern(draw: ImageDraw.ImageDraw, rng: random.Random, at, ink: tuple) -> None:
    """A per-product pattern on the product's middle, so no two products look alike."""
    style = rng.choice(("stripes", "dots", "band", "plain"))
    x0, y0 = at(0.4, 0.5)
    x1, y1 = at(0.6, 0.7)
    if style == "stripes":
        for i in range(rng.randrange(2, 5)):
            y = y0 + (y1 - y0) * (i + 0.5) / 4
            draw.line([(x0, y), (x1, y)], fill=ink, width=2)
    elif style == "dots":
        for _ in range(rng.randrange(3, 7)):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=ink)
    elif style == "band":
        draw.rectangle([x0, y0, x1, y0 + rng.uniform(3, 7)], fill=ink)


def _brand_mark(draw: ImageDraw.ImageDraw, brand: str, w: int, h: int) -> None:
    """The brand's mark in the top-left corner, in the brand's ink."""
    ink, mark = _BRAND_INK[brand], _BRAND_MARKS[brand]
    x, y, s = w * 0.06, h * 0.06, w * 0.12
    if mark == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=ink)
    elif mark == "triangle":
        draw.polygon([(x, y + s), (x + s / 2, y), (x + s, y + s)], fill=ink)
    elif mark == "square":
        draw.rectangle([x, y, x + s, y + s], fill=ink)
    elif mark == "diamond":
        draw.polygon([(x + s / 2, y), (x + s, y + s / 2), (x + s / 2, y + s), (x, y + s / 2)], fill=ink)
    else:
        draw.rectangle([x, y + s / 3, x + s * 1.6, y + s * 2 / 3], fill=ink)


def sample_image_bytes(url: str) -> bytes:
    """PNG bytes of a ``sample-product://<id>.png`` URL (ValueError for another URL: the fetcher's FetchError)."""
    buf = io.BytesIO()
    sample_image(url).save(buf, format="PNG")
    return buf.getvalue()


def sample_fetch_schemes() -> dict:
    """For the image fetcher's ``schemes=``: sample product images are drawn, not downloaded."""
    return {SAMPLE_SCHEME: sample_image_bytes}
