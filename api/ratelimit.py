"""``x-ratelimit-*`` response headers: the caller's limits and what is left of them now."""

from __future__ import annotations

from shared import keys
from shared.limiter import Limiter

NAMES = {"requests": "rpm", "tokens": "tpm", "concurrency": "max_concurrency"}


async def ratelimit_headers(redis, limiter: Limiter, account_id: str) -> dict[str, str]:
    fields = await redis.hmget(keys.account(account_id), *NAMES.values())
    limits = {name: int(v) for name, v in zip(NAMES, fields) if v}
    if not limits:
        return {}
    headers = {}
    for name, usage in (await limiter.account_usage(account_id, limits)).items():
        if usage.limit is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(usage.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(usage.remaining)
    return headers
