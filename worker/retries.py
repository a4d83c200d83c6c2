"""When a failed provider call is made again, and after how long: the one retry policy of every
adapter.

Retryable faults (429, 408/409/425, 5xx and 529, refused or broken connections, timeouts, cut
streams: ``ProviderError.retryable``, decided in ``worker/providers/http.py``) are retried up to
``MAX_PROVIDER_CALLS`` calls per attempt, waiting the upstream's ``Retry-After`` where it gives
one, else an exponential backoff with jitter. A ``Retry-After`` longer than
``MAX_RETRY_AFTER_SECONDS`` is not waited for: the client hears the fault now. The job's time
limit bounds it all (``worker/runner.py``).
"""

from __future__ import annotations

import random

from worker.providers.base import ProviderError

MAX_PROVIDER_CALLS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 20.0
MAX_RETRY_AFTER_SECONDS = 60.0


def backoff(calls: int) -> float:
    """The wait after the ``calls``-th failed call when the upstream named none: 0.5 s doubling,
    capped at 20 s, each drawn from its upper half (jitter, so that retries spread out)."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (calls - 1)) * random.uniform(0.5, 1.0)


def may_retry(error: ProviderError, calls: int) -> bool:
    """Whether ``error``, ending the ``calls``-th call of an attempt, is one to call again after."""
    return error.retryable and calls < MAX_PROVIDER_CALLS


def retry_delay(error: ProviderError, calls: int) -> float | None:
    """Seconds to wait before calling again (``may_retry`` said yes); None when the upstream asks
    for a wait too long to be worth it: the client hears the fault now."""
    if error.retry_after is not None:
        return None if error.retry_after > MAX_RETRY_AFTER_SECONDS else error.retry_after
    return backoff(calls)
