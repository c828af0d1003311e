"""A small YouTube Data API v3 client for ``videos.list?chart=mostPopular``.

The API key travels in the ``X-Goog-Api-Key`` header, never in a URL, and is scrubbed from
every message we raise, so it cannot leak through logs, exceptions or the Dagster UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests
from pydantic import BaseModel, StrictInt, ValidationError, field_validator

from thumblab_dagster.lib.collections.thumbnails.trending import parse_time
from thumblab_dagster.lib.embed.http import retrying_session
from thumblab_dagster.lib.settings import SETTING

DEFAULT_BASE_URL = SETTING["youtube_base_url"].default  # declared in lib/settings.py
MAX_PAGE_SIZE = 50  # the API's own cap on maxResults

_QUOTA_REASONS = {"quotaExceeded", "dailyLimitExceeded", "rateLimitExceeded", "userRateLimitExceeded"}
_KEY_REASONS = {"keyInvalid", "keyExpired", "API_KEY_INVALID", "API_KEY_EXPIRED", "accessNotConfigured",
                "SERVICE_DISABLED", "ipRefererBlocked", "API_KEY_SERVICE_BLOCKED"}
_NO_CHART_REASONS = {"videoChartNotFound", "invalidCategoryId", "regionCodeNotFound"}


class YouTubeError(RuntimeError):
    """The YouTube API refused or failed a request; the message says what to do."""


class YouTubeQuotaError(YouTubeError):
    pass


class YouTubeKeyError(YouTubeError):
    pass


@dataclass
class ChartResult:
    items: list[dict]
    warnings: list[str] = field(default_factory=list)


# The parts of a videos.list response that frame_from_items reads, with their JSON types: a field
# may be absent or null, but one of another type is the server's mistake, named as such rather
# than an AttributeError deep in the table code. Checked only: the items travel on as they came.
class _Thumbnail(BaseModel):
    url: str | None = None
    width: StrictInt | None = None
    height: StrictInt | None = None


class _Snippet(BaseModel):
    publishedAt: str | None = None  # noqa: N815 (the API's names)
    title: str | None = None
    channelTitle: str | None = None  # noqa: N815
    description: str | None = None
    categoryId: str | None = None  # noqa: N815
    thumbnails: dict[str, _Thumbnail] | None = None

    @field_validator("publishedAt")
    @classmethod
    def _a_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)  # ValueError: not an RFC 3339 time
        return value


class _Statistics(BaseModel):
    viewCount: int | None = None  # noqa: N815 (a decimal string in the API)


class _Video(BaseModel):
    id: str | None = None
    snippet: _Snippet | None = None
    statistics: _Statistics | None = None


class _Page(BaseModel):
    items: list[_Video] | None = None
    nextPageToken: str | None = None  # noqa: N815


_EXPECTED = {"dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
             "list_type": "a list", "string_type": "a string", "int_type": "a whole number",
             "int_parsing": "a whole number", "int_from_float": "a whole number",
             "value_error": "a time such as 2026-11-21T10:00:00Z"}  # the one validator: publishedAt


def shape_problem(body) -> str | None:
    """The first field of ``body`` (a videos.list page) whose JSON type is wrong, named by its path
    (``items[3].snippet``), or None when the page has the documented shape."""
    try:
        _Page.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        value = error["input"]
        kind = {"dict": "an object ", "list": "a list ", "str": "the string ", "int": "the number ",
                "float": "the number ", "bool": "the boolean "}.get(type(value).__name__, "")
        shown = "null" if value is None else repr(value)[:40]
        expected = _EXPECTED.get(error["type"], error["msg"])
        return f"{path or 'the response body'} is {kind}{shown}, expected {expected}"
    return None


def _error_reasons(response: requests.Response) -> tuple[set[str], str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):  # not JSON, or not an object
        return set(), response.text[:200]
    if not isinstance(error, dict):
        return set(), str(error)[:200]
    listed = [e for key in ("errors", "details") if isinstance(error.get(key), list) for e in error[key]]
    reasons = {e.get("reason") for e in listed if isinstance(e, dict) and isinstance(e.get("reason"), str)}
    return reasons, str(error.get("message") or "")


class YouTubeClient:
    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, region_code: str = "US",
                 timeout_s: float = 15.0, retries: int = 3, backoff_factor: float = 1.0):
        if not api_key:
            raise YouTubeKeyError("YOUTUBE_API_KEY is empty: set it to a YouTube Data API v3 key, "
                                  "or unset it to use the bundled sample source.")
        self._key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.region_code = region_code
        self.timeout_s = timeout_s
        self._session = retrying_session(retries=retries, backoff_factor=backoff_factor)
        self._session.headers["X-Goog-Api-Key"] = api_key

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def most_popular(self, category_id: str, max_results: int = 30) -> ChartResult:
        """The region's most popular videos in one category, paging past 50 as needed."""
        if max_results < 1:
            raise ValueError(f"max_results must be at least 1, got {max_results}")
        items: list[dict] = []
        page_token = None
        while len(items) < max_results:
            params = {
                "part": "snippet,statistics",
                "chart": "mostPopular",
                "videoCategoryId": category_id,
                "regionCode": self.region_code,
                "maxResults": min(MAX_PAGE_SIZE, max_results - len(items)),
            }
            if page_token:
                params["pageToken"] = page_token
            body = self._get("videos", params, category_id)
            if body is None:
                return ChartResult([], [f"no mostPopular chart for category {category_id} in region "
                                        f"{self.region_code}: the partition is empty"])
            items.extend(body.get("items") or [])
            page_token = body.get("nextPageToken")
            if not page_token:
                break
        warnings = [] if items else [f"the mostPopular chart for category {category_id} in region "
                                     f"{self.region_code} returned no videos"]
        return ChartResult(items[:max_results], warnings)

    def _get(self, resource: str, params: dict, category_id: str) -> dict | None:
        url = f"{self.base_url}/{resource}"
        try:
            response = self._session.get(url, params=params, timeout=(5.0, self.timeout_s))
        except requests.RequestException as exc:
            raise YouTubeError(self._scrub(
                f"YouTube API at {self.base_url} unreachable after retries ({type(exc).__name__}): "
                "check the network or YOUTUBE_API_BASE_URL, then re-run the partition")) from None
        if response.ok:
            try:
                body = response.json()
            except ValueError:
                raise YouTubeError(f"YouTube API answered HTTP {response.status_code} with a body that "
                                   "is not JSON: check YOUTUBE_API_BASE_URL") from None
            problem = shape_problem(body)
            if problem:
                raise YouTubeError(self._scrub(
                    f"YouTube API at {self.base_url} answered category {category_id} with JSON of the wrong shape: "
                    f"{problem}. Check that YOUTUBE_API_BASE_URL points at the YouTube Data API v3"))
            return body
        reasons, message = _error_reasons(response)
        status = response.status_code
        detail = self._scrub(f"HTTP {status} {', '.join(sorted(reasons)) or ''} {message}".strip())
        if reasons & _NO_CHART_REASONS or (status == 404 and not reasons):
            return None
        if reasons & _QUOTA_REASONS:
            raise YouTubeQuotaError(
                f"YouTube Data API quota exhausted ({detail}). Wait for the daily quota reset "
                "(midnight Pacific time) or raise the quota in the Google Cloud console, then re-run "
                "the partition.")
        if reasons & _KEY_REASONS or status in (401, 403):
            raise YouTubeKeyError(
                f"YouTube Data API rejected the key ({detail}). Check YOUTUBE_API_KEY and that the "
                "YouTube Data API v3 is enabled for its Google Cloud project.")
        raise YouTubeError(f"YouTube API request for category {category_id} failed ({detail}); "
                           "it was retried where that could help.")
