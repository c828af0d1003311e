"""One HTTP session factory: retries with backoff on 5xx and timeouts (urllib3's Retry)."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

USER_AGENT = "thumblab-dagster/0.1 (+https://github.com/thumblab)"


def retrying_session(retries: int = 3, backoff_factor: float = 0.5,
                     pool_size: int = 16) -> requests.Session:
    """A ``requests.Session`` that retries idempotent requests on 5xx, resets and timeouts.

    After the last retry the final response is returned (not raised), so callers can read
    the API's own error body.
    """
    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries,
        backoff_factor=backoff_factor,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
