"""The five Thumbnail Lab niches and their YouTube category ids, defined once."""

from __future__ import annotations

# niche name -> YouTube videoCategoryId (see the YouTube category list)
NICHE_CATEGORY_IDS: dict[str, str] = {
    "tech": "28",
    "gaming": "20",
    "education": "27",
    "entertainment": "24",
    "people": "22",
}
NICHES: tuple[str, ...] = tuple(NICHE_CATEGORY_IDS)

# Partition dates are days in Hobart (the daily run is at 03:00 there).
TIMEZONE = "Australia/Hobart"

# How many trailing dates of embeddings a niche's reference library covers.
WINDOW_DAYS = 90


def category_id(niche: str) -> str:
    try:
        return NICHE_CATEGORY_IDS[niche]
    except KeyError:
        raise ValueError(
            f"unknown niche {niche!r}: expected one of {', '.join(NICHES)}"
        ) from None
