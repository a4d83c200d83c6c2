"""A failed job's code as an HTTP status, for every door: the client's mistakes are 4xx, the
upstream's and the fleet's 5xx (a provider still rate-limiting after the retries is passed on
as 429, with ``Retry-After``)."""

from __future__ import annotations

ERROR_STATUS = {
    "invalid_request": 400,
    "model_unavailable": 400,
    "context_length_exceeded": 400,
    "upstream_rejected": 400,
    "content_filter": 400,
    "limit_exceeded": 400,
    "upstream_rate_limited": 429,
    "budget_exceeded": 429,
    "upstream_auth": 502,
    "upstream_unavailable": 502,
    "upstream_unreachable": 502,
    "upstream_invalid": 502,
    "stream_cut": 502,
    "stream_interrupted": 502,
    "upstream_timeout": 504,
    "timeout": 504,
    "redelivery_limit": 500,
    "internal_error": 500,
}
UPSTREAM_RETRY_AFTER_SECONDS = 5


def failure_status(code: str | None, unknown: int = 502) -> int:
    """The status of a job that failed with ``code`` (``unknown`` for a code not listed)."""
    return ERROR_STATUS.get(code or "", unknown)
