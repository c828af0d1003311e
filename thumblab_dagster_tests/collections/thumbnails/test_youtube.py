from datetime import datetime, timezone

import pytest

from thumblab_dagster.lib.collections.thumbnails.youtube import (
    YouTubeClient,
    YouTubeError,
    YouTubeKeyError,
    YouTubeQuotaError,
    shape_problem,
)
from thumblab_dagster_tests.conftest import TEST_KEY
from thumblab_dagster_tests.fakes.youtube import video_item


def client(youtube, **kw):
    return YouTubeClient(TEST_KEY, base_url=youtube.base_url, backoff_factor=0.0, **kw)


def test_most_popular_sends_documented_params_and_key_only_in_header(youtube):
    youtube.add_videos("28", "tech", 5)
    result = client(youtube, region_code="AU").most_popular("28", max_results=30)
    assert [item["id"] for item in result.items] == [f"tech{i:03d}" for i in range(5)]
    request = youtube.requests[0]
    assert request["query"] == {"part": "snippet,statistics", "chart": "mostPopular", "videoCategoryId": "28",
                                "regionCode": "AU", "maxResults": "30"}
    assert request["headers"]["X-Goog-Api-Key"] == TEST_KEY
    assert TEST_KEY not in request["raw_path"]


def test_pages_past_fifty(youtube):
    youtube.add_videos("20", "game", 70)
    result = client(youtube).most_popular("20", max_results=60)
    assert len(result.items) == 60
    assert len({item["id"] for item in result.items}) == 60
    assert [r["query"]["maxResults"] for r in youtube.requests] == ["50", "10"]
    assert youtube.requests[1]["query"]["pageToken"] == "50"


def test_server_error_is_retried_then_succeeds(youtube):
    youtube.add_videos("27", "edu", 3)
    youtube.errors["27"] = [(500, "backendError")]
    result = client(youtube).most_popular("27")
    assert len(result.items) == 3
    assert len(youtube.requests) == 2


def test_persistent_server_errors_fail_with_a_clear_message(youtube):
    youtube.errors["27"] = [(503, "backendError")] * 10
    with pytest.raises(YouTubeError, match="HTTP 503") as err:
        client(youtube, retries=2).most_popular("27")
    assert len(youtube.requests) == 3  # first try + 2 retries
    assert TEST_KEY not in str(err.value)


def test_quota_exceeded_fails_fast_and_says_what_to_do(youtube):
    youtube.errors["24"] = [(403, "quotaExceeded")]
    with pytest.raises(YouTubeQuotaError, match="quota") as err:
        client(youtube).most_popular("24")
    assert "re-run" in str(err.value)
    assert len(youtube.requests) == 1  # no retries on a quota error
    assert TEST_KEY not in str(err.value)


def test_invalid_key_fails_fast(youtube):
    youtube.errors["24"] = [(400, "keyInvalid")]
    with pytest.raises(YouTubeKeyError, match="YOUTUBE_API_KEY"):
        client(youtube).most_popular("24")
    assert len(youtube.requests) == 1


def test_category_without_chart_is_empty_with_warning(youtube):
    youtube.errors["22"] = [(404, "videoChartNotFound")]
    result = client(youtube).most_popular("22")
    assert result.items == []
    assert "no mostPopular chart for category 22" in result.warnings[0]


def test_unreachable_api_names_the_url_but_not_the_key():
    # A closed loopback port: connection refused, retried, then a clear error.
    c = YouTubeClient(TEST_KEY, base_url="http://127.0.0.1:9/youtube/v3", retries=1, backoff_factor=0.0)
    with pytest.raises(YouTubeError, match="unreachable") as err:
        c.most_popular("28")
    assert TEST_KEY not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_empty_key_is_refused():
    with pytest.raises(YouTubeKeyError, match="YOUTUBE_API_KEY"):
        YouTubeClient("")


def test_json_of_the_wrong_shape_names_the_field(youtube):
    youtube.add_videos("28", "tech", 2)
    youtube.charts["28"][1]["snippet"] = 5  # an int where the snippet object belongs
    with pytest.raises(YouTubeError) as err:
        client(youtube).most_popular("28")
    message = str(err.value)
    assert "items[1].snippet is the number 5, expected an object" in message
    assert "YOUTUBE_API_BASE_URL" in message and TEST_KEY not in message and "\n" not in message


@pytest.mark.parametrize("body, problem", [
    ({"items": {"id": "x"}}, "items is an object {'id': 'x'}, expected a list"),
    ([{"id": "x"}], "the response body is a list [{'id': 'x'}], expected an object"),
    (None, "the response body is null, expected an object"),
    ({"items": [{"id": 7}]}, "items[0].id is the number 7, expected a string"),
    ({"items": [{"id": "x", "statistics": {"viewCount": "many"}}]},
     "items[0].statistics.viewCount is the string 'many', expected a whole number"),
    ({"items": [{"id": "x", "snippet": {"publishedAt": "yesterday"}}]},
     "items[0].snippet.publishedAt is the string 'yesterday', expected a time such as 2026-11-21T10:00:00Z"),
    ({"items": [{"id": "x", "snippet": {"thumbnails": {"high": {"url": "u", "width": "480"}}}}]},
     "items[0].snippet.thumbnails.high.width is the string '480', expected a whole number"),
    ({"items": [], "nextPageToken": 50}, "nextPageToken is the number 50, expected a string"),
])
def test_shape_problems_are_named_by_their_path(body, problem):
    assert shape_problem(body) == problem


def test_the_documented_shape_passes_and_nulls_are_allowed():
    item = video_item("x", "28", "http://127.0.0.1:9/x.jpg", datetime(2026, 11, 20, tzinfo=timezone.utc))
    item["snippet"]["title"] = None
    assert shape_problem({"kind": "youtube#videoListResponse", "items": [item], "nextPageToken": "50"}) is None


def test_an_error_body_of_the_wrong_shape_is_read_without_crashing():
    assert _error_reasons_of(b'{"error": "boom"}') == (set(), "boom")
    assert _error_reasons_of(b'[1, 2]') == (set(), "[1, 2]")
    assert _error_reasons_of(b'{"error": {"errors": [5, {"reason": 3}, {"reason": "quotaExceeded"}]}}') == (
        {"quotaExceeded"}, "")


def _error_reasons_of(body: bytes):
    import requests

    from thumblab_dagster.lib.collections.thumbnails.youtube import _error_reasons

    response = requests.Response()
    response._content, response.status_code = body, 500
    return _error_reasons(response)
