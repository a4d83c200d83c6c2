"""``x-ratelimit-*`` response headers: the caller's limits and what is left of them now, read
from the keys the workers' admissions write (``worker/limits.py``)."""

from __future__ import annotations

import time

from shared import keys
from shared.settings import Settings

NAMES = {"requests": "rpm", "tokens": "tpm", "concurrency": "max_concurrency"}


async def ratelimit_headers(redis, settings: Settings, account_id: str) -> dict[str, str]:
    fields = await redis.hmget(keys.account(account_id), *NAMES.values())
    limits = {name: int(v) for name, v in zip(NAMES, fields) if v}
    if not limits:
        return {}
    req, _, total, conc = keys.account_rate(account_id)
    now_ms = int(time.time() * 1000)
    window_ms = int(settings.rate_window_seconds * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(req, now_ms - window_ms, "+inf")
        pipe.get(total)
        pipe.zcount(conc, now_ms, "+inf")
        used_requests, used_tokens, running = await pipe.execute()
    headers = {}
    for name, used in (("requests", used_requests), ("tokens", int(used_tokens or 0)), ("concurrency", running)):
        limit = limits.get(name)
        if limit is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(limit - int(used), 0))
    return headers
