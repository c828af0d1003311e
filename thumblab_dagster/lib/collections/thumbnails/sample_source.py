"""A deterministic, offline stand-in for YouTube's trending chart.

Each niche publishes ten made-up videos a day; a date's chart is 30 of those published in the
five days before it, so neighbouring dates overlap the way real charts do. Metadata comes in
the YouTube API's own ``videos`` shape, and thumbnails are drawn in-process with PIL from the
video id (``sample://<niche>/<video_id>.png``), each niche with its own look.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
from datetime import date as Date
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from PIL import Image, ImageDraw, ImageFont

from thumblab_dagster.lib.collections.thumbnails.niches import category_id as niche_category_id

SCHEME = "sample://"
HOBART = ZoneInfo("Australia/Hobart")
_EPOCH = Date(2026, 1, 1)
_PER_DAY = 10
_LOOKBACK_DAYS = 5
THUMB_SIZE = (480, 360)  # YouTube's "high" thumbnail

_STYLE = {
    # background gradient, accent colours, motif, words used in titles
    "tech": ((10, 25, 60), (20, 90, 160), [(0, 220, 255), (120, 255, 200), (255, 255, 255)], "circuit",
             ["Laptop", "Phone", "GPU", "Chip", "Keyboard", "Headphones", "Camera", "Router", "AI", "Drone"]),
    "gaming": ((30, 0, 45), (90, 0, 120), [(0, 255, 90), (255, 0, 200), (255, 220, 0)], "stripes",
               ["Boss Fight", "Speedrun", "Speed Build", "Ranked", "Raid", "Open World", "Mod", "Loot", "Patch", "Clutch"]),
    "education": ((250, 240, 200), (255, 210, 120), [(30, 60, 120), (200, 40, 40), (20, 120, 60)], "grid",
                  ["Calculus", "Physics", "History", "Chemistry", "Grammar", "Biology", "Economics", "Coding", "Maps", "Math"]),
    "entertainment": ((120, 0, 10), (255, 90, 0), [(255, 230, 0), (255, 255, 255), (0, 0, 0)], "burst",
                      ["Trailer", "Prank", "Reaction", "Challenge", "Sketch", "Show", "Music", "Movie", "Celebrity", "Awards"]),
    "people": ((255, 210, 200), (200, 120, 140), [(110, 60, 40), (250, 250, 250), (60, 30, 60)], "faces",
               ["Vlog", "Day in My Life", "Storytime", "Routine", "Q&A", "Travel", "Family", "Wedding", "Apartment Tour", "Haul"]),
}
_TITLE_TEMPLATES = [
    "I tried the new {w} for 30 days", "{w}: everything you need to know", "The truth about {w}",
    "{w} in 10 minutes", "Why {w} changed everything", "Top 5 {w} moments", "{w} gone wrong",
    "Ranking every {w}", "Is {w} worth it?", "My honest {w} review",
]
_CHANNELS = ["Northbound", "Pixel Pine", "Tasman Media", "Bright Study", "Kettle & Co", "Loud Planet",
             "Quiet Hours", "Orbit Lab", "Wren Stories", "Blue Gum", "Daybreak", "Moonmilk"]


def _hash_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _video_id(niche: str, serial: int) -> str:
    # 11 URL-safe characters, like a real YouTube id.
    raw = hashlib.sha256(f"thumblab-sample|{niche}|{serial}".encode()).digest()
    return base64.urlsafe_b64encode(raw).decode()[:11]


def _published_at(niche: str, serial: int) -> datetime:
    day = _EPOCH + timedelta(days=math.floor(serial / _PER_DAY))
    seconds = _hash_int(niche, serial, "t") % 86400
    return datetime.combine(day, time(), tzinfo=timezone.utc) + timedelta(seconds=seconds)


def collection_time(date: str) -> datetime:
    """When the sample chart for ``date`` is collected: 03:00 that day in Hobart, in UTC."""
    return datetime.combine(Date.fromisoformat(date), time(3), tzinfo=HOBART).astimezone(timezone.utc)


def trending_items(niche: str, date: str, max_results: int = 30) -> list[dict]:
    """The sample chart for one niche and date, as YouTube ``videos`` resources."""
    style = _STYLE[niche]
    collected = collection_time(date)
    day = (Date.fromisoformat(date) - _EPOCH).days
    serials = [s for s in range((day - _LOOKBACK_DAYS) * _PER_DAY, day * _PER_DAY)
               if _published_at(niche, s) < collected]
    rng = random.Random(_hash_int(niche, date))
    chosen = rng.sample(serials, min(max_results, len(serials)))
    items = []
    for serial in chosen:
        vid = _video_id(niche, serial)
        published = _published_at(niche, serial)
        word = style[4][_hash_int(niche, serial, "w") % len(style[4])]
        template = _TITLE_TEMPLATES[_hash_int(niche, serial, "title") % len(_TITLE_TEMPLATES)]
        hours = max((collected - published).total_seconds() / 3600.0, 1.0)
        popularity = 200 + _hash_int(niche, serial, "pop") % 20000  # views per hour, stable per video
        items.append({
            "kind": "youtube#video",
            "id": vid,
            "snippet": {
                "publishedAt": published.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "channelId": "UC" + _video_id(niche, -1 - _hash_int(niche, serial, "c") % 40)[:10],
                "title": template.format(w=word),
                "description": f"A sample {niche} video about {word.lower()}.",
                "channelTitle": _CHANNELS[_hash_int(niche, serial, "ch") % len(_CHANNELS)],
                "categoryId": niche_category_id(niche),
                "thumbnails": {
                    "high": {"url": f"{SCHEME}{niche}/{vid}.png", "width": THUMB_SIZE[0],
                             "height": THUMB_SIZE[1]},
                },
            },
            "statistics": {"viewCount": str(int(popularity * hours))},
        })
    return items


def render_thumbnail(niche: str, video_id: str) -> Image.Image:
    """Draw the thumbnail of a sample video: same id, same picture."""
    if niche not in _STYLE:
        raise ValueError(f"no sample thumbnails for niche {niche!r}")
    top, bottom, accents, motif, words = _STYLE[niche]
    rng = random.Random(_hash_int(niche, video_id, "img"))
    w, h = THUMB_SIZE
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):  # vertical gradient, the niche's signature
        t = y / (h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    accent = accents[rng.randrange(len(accents))]
    if motif == "circuit":
        for _ in range(14):
            x, y = rng.randrange(w), rng.randrange(h)
            x2, y2 = x + rng.randrange(-160, 160), y
            draw.line([(x, y), (x2, y2), (x2, y2 + rng.randrange(-90, 90))], fill=accent, width=3)
            draw.ellipse([x2 - 5, y2 - 5, x2 + 5, y2 + 5], fill=accent)
        draw.rounded_rectangle([w * 0.55, h * 0.2, w * 0.92, h * 0.8], radius=18, outline=(255, 255, 255), width=6)
    elif motif == "stripes":
        for i in range(-h, w, 40):
            draw.line([(i, h), (i + h, 0)], fill=accent, width=rng.randrange(4, 14))
        draw.polygon([(w * 0.6, h * 0.15), (w * 0.95, h * 0.5), (w * 0.6, h * 0.85)], fill=accents[0])
    elif motif == "grid":
        for x in range(0, w, 30):
            draw.line([(x, 0), (x, h)], fill=(200, 200, 190), width=1)
        for y in range(0, h, 30):
            draw.line([(0, y), (w, y)], fill=(200, 200, 190), width=1)
        draw.rectangle([w * 0.08, h * 0.12, w * 0.6, h * 0.6], fill=(40, 70, 50), outline=accent, width=6)
    elif motif == "burst":
        cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
        for i in range(24):
            a = 2 * math.pi * i / 24
            draw.polygon([(cx, cy), (cx + 600 * math.cos(a), cy + 600 * math.sin(a)),
                          (cx + 600 * math.cos(a + 0.12), cy + 600 * math.sin(a + 0.12))], fill=accent)
        draw.ellipse([cx - 70, cy - 70, cx + 70, cy + 70], fill=accents[1], outline=accents[2], width=5)
    else:  # faces
        for _ in range(rng.randrange(1, 4)):
            cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.35, 0.7) * h, rng.uniform(50, 90)
            draw.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.2], fill=accent)
            draw.ellipse([cx - r * 0.4, cy - r * 0.3, cx - r * 0.2, cy - r * 0.1], fill=accents[2])
            draw.ellipse([cx + r * 0.2, cy - r * 0.3, cx + r * 0.4, cy - r * 0.1], fill=accents[2])
            draw.arc([cx - r * 0.4, cy, cx + r * 0.4, cy + r * 0.5], 20, 160, fill=accents[2], width=4)
    for _ in range(rng.randrange(2, 6)):  # per-video variation
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(8, 40)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=accents[rng.randrange(len(accents))])
    caption = words[_hash_int(niche, video_id, "cap") % len(words)].upper()
    font = ImageFont.load_default(size=44)
    draw.text((18, h - 70), caption, font=font, fill=(255, 255, 255), stroke_width=4, stroke_fill=(0, 0, 0))
    return img


def thumbnail_bytes(url: str) -> bytes:
    """PNG bytes for a ``sample://<niche>/<video_id>.png`` URL."""
    path = url[len(SCHEME):] if url.startswith(SCHEME) else url
    niche, _, name = path.partition("/")
    video_id = name.rsplit(".", 1)[0]
    if not video_id:
        raise ValueError(f"not a sample thumbnail URL: {url!r}")
    buf = io.BytesIO()
    render_thumbnail(niche, video_id).save(buf, format="PNG")
    return buf.getvalue()


# For the image fetcher: thumbnails of the bundled sample are drawn, not downloaded.
FETCH_SCHEMES = {SCHEME.rstrip(":/"): thumbnail_bytes}
