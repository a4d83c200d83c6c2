"""Per-account and per-deployment rate limits, enforced atomically in Redis for the whole fleet.

A limit of N per minute admits at most N in any window of ``CHATFLEET_RATE_WINDOW_SECONDS``
(60): a sliding log of admissions, not a fixed window (which lets 2N through at a boundary)
nor a token bucket (which lets a burst of N follow a full minute). Admission is one Lua script
(``lua/admit.lua``): requests, estimated tokens (prompt + max_tokens) and a concurrency lease,
across the account, the account's per-model override and the provider deployment, all or
nothing. After the call, ``settle`` replaces the estimate with the real count and frees the
lease. Leases expire on their own, so a killed worker cannot lock an account out. The API
reads what is left of the account's limits for its response headers (``api/ratelimit.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from shared import keys
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts
from shared.settings import Settings


@dataclass
class Admission:
    outcome: str  # admitted | waiting | too_large
    next_job: str = ""
    # Whether the admission recorded anything (a limit applied): only then is there anything
    # for ``settle`` to reconcile or release.
    holds: bool = True
    retry_at: float | None = None  # unix seconds
    reason: str = ""


class Limiter:
    def __init__(self, redis, settings: Settings, channel: ScriptChannel | None = None):
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis, channel)

    @property
    def window_ms(self) -> int:
        return int(self.settings.rate_window_seconds * 1000)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_seconds * 1000)

    async def admit(
        self, *, job_id: str, account_id: str, model: str, deployment: str,
        deployment_rpm: int | None, deployment_tpm: int | None, tokens: int, submitted_at: float,
    ) -> Admission:
        result = await self.scripts.admit(
            keys=[keys.account(account_id), keys.account_waiting(account_id), keys.THROTTLED_ACCOUNTS,
                  *keys.rate_scopes(account_id, model, deployment), keys.job(job_id)],
            args=[int(time.time() * 1000), self.window_ms, job_id, tokens, self.lease_ms, account_id,
                  repr(submitted_at), model, deployment_rpm or -1, deployment_tpm or -1],
        )
        if result[0] == "admitted":
            return Admission("admitted", next_job=result[1], holds=result[2] == "1")
        if result[0] == "waiting":
            return Admission("waiting", retry_at=int(result[1]) / 1000, reason=result[2])
        return Admission("too_large", reason=result[1])

    async def settle(self, *, job_id: str, account_id: str, model: str, deployment: str, tokens: int) -> str:
        """Record the real token count and free the job's slots; returns the account's next
        waiting job ("" if none)."""
        return await self.scripts.settle(
            keys=[keys.account_waiting(account_id), *keys.rate_scopes(account_id, model, deployment)],
            args=[job_id, tokens],
        )

    def renew_leases(self, pipe, *, job_id: str, account_id: str, model: str, deployment: str) -> None:
        """Queue on ``pipe`` the renewal of the job's concurrency leases (only those it holds)."""
        expiry = int(time.time() * 1000) + self.lease_ms
        for key in keys.rate_scopes(account_id, model, deployment)[3::4]:
            pipe.zadd(key, {job_id: expiry}, xx=True)


def reservation(prompt_bytes: int, max_tokens: int | None, fallback_completion: int) -> int:
    """Tokens to reserve before the call: a high estimate of the prompt (one token per 3 bytes
    of UTF-8, more than real tokenizers produce on almost any text) plus the completion bound."""
    return math.ceil(prompt_bytes / 3) + (max_tokens if max_tokens is not None else fallback_completion)
