"""A small YouTube Data API v3 client for ``videos.list?chart=mostPopular``.

The API key travels in the ``X-Goog-Api-Key`` header, never in a URL, and is scrubbed from
every message we raise, so it cannot leak through logs, exceptions or the Dagster UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests

from thumblab_dagster.lib.embed.http import retrying_session

DEFAULT_BASE_URL = "https://www.googleapis.com/youtube/v3"
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


def _error_reasons(response: requests.Response) -> tuple[set[str], str]:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return set(), response.text[:200]
    reasons = {e.get("reason") for e in error.get("errors") or [] if e.get("reason")}
    reasons |= {d.get("reason") for d in error.get("details") or [] if isinstance(d, dict) and d.get("reason")}
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
                return response.json()
            except ValueError:
                raise YouTubeError(f"YouTube API answered HTTP {response.status_code} with a body that "
                                   "is not JSON: check YOUTUBE_API_BASE_URL") from None
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
