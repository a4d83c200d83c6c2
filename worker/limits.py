"""Per-account and per-deployment rate limits, enforced atomically in Redis for the whole fleet.

A limit of N per minute admits at most N in any window of ``CHATFLEET_RATE_WINDOW_SECONDS``
(60): a sliding log of admissions, not a fixed window (which lets 2N through at a boundary)
nor a token bucket (which lets a burst of N follow a full minute). Admission is one Lua script
(``lua/admit.lua``): requests, estimated tokens (``JobSpec.reserved_tokens``: the prompt's high
estimate plus the job's completion bound) and a concurrency lease,
across the account and the account's per-model override, all or nothing, in the account's slot;
then, where the provider deployment has limits, a second in the deployment's
(``lua/admit_deployment.lua``), whose refusal gives the first back (``lua/unadmit.lua``). After
the call, ``settle`` replaces the estimate with the real count and frees the lease. Leases expire
on their own, so a killed worker cannot lock an account out. The API
reads what is left of the account's limits for its response headers (``api/ratelimit.py``).
"""

from __future__ import annotations

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
    # Whether the deployment's limits hold anything of the job (settled apart, in their slot).
    deployment_holds: bool = False


class Limiter:
    def __init__(self, redis, settings: Settings, channel: ScriptChannel | None = None):
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis, channel, check_slots=settings.check_slots)

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
        dep_rpm, dep_tpm = deployment_rpm or None, deployment_tpm or None  # 0: no limit
        if dep_tpm is not None and tokens > dep_tpm:  # could never be admitted: do not wait
            return Admission("too_large", reason=f"provider deployment tokens-per-window limit is {dep_tpm}, "
                                                 f"the request needs up to {tokens}")
        now_ms = int(time.time() * 1000)
        account_scopes = keys.rate_scopes(account_id, model, deployment)[:8]
        result = await self.scripts.admit(
            keys=[keys.account(account_id), keys.account_waiting(account_id), keys.throttled_of(account_id),
                  *account_scopes],
            args=[now_ms, self.window_ms, job_id, tokens, self.lease_ms, account_id, repr(submitted_at), model],
        )
        if result[0] == "waiting":
            return Admission("waiting", retry_at=int(result[1]) / 1000, reason=result[2])
        if result[0] != "admitted":
            return Admission("too_large", reason=result[1])
        admission = Admission("admitted", next_job=result[1], holds=result[2] == "1")
        if dep_rpm is not None or dep_tpm is not None:
            dep = await self.scripts.admit_deployment(
                keys=keys.deployment_rate(deployment),
                args=[now_ms, self.window_ms, job_id, tokens, self.lease_ms, dep_rpm or -1, dep_tpm or -1],
            )
            if dep[0] == "waiting":
                await self.scripts.unadmit(
                    keys=[keys.account_waiting(account_id), keys.throttled_of(account_id), *account_scopes],
                    args=[job_id, account_id, repr(submitted_at), dep[1]],
                )
                return Admission("waiting", retry_at=int(dep[1]) / 1000, reason=dep[2])
            admission.holds = admission.deployment_holds = True
        if result[3] == "1":
            # Each admission is a provider call about to be made (not one made again): the job's
            # bill, should its workers all be lost, counts the prompts sent (shared/jobs.py).
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(keys.job(job_id), "started_at", f"{now_ms / 1000:.3f}")
                pipe.hincrby(keys.job(job_id), "admitted", 1)
                await pipe.execute()
        return admission

    async def settle(self, *, job_id: str, account_id: str, model: str, deployment: str, tokens: int,
                     deployment_holds: bool = True) -> str:
        """Record the real token count and free the job's slots (the deployment's too, where
        they hold anything of it); returns the account's next waiting job ("" if none)."""
        scopes = keys.rate_scopes(account_id, model, deployment)
        if deployment_holds:
            await self.scripts.settle(keys=scopes[8:], args=[job_id, tokens, "0"])
        return await self.scripts.settle(keys=[keys.account_waiting(account_id), *scopes[:8]],
                                         args=[job_id, tokens, "1"])

    def renew_leases(self, pipe, *, job_id: str, account_id: str, model: str, deployment: str) -> None:
        """Queue on ``pipe`` the renewal of the job's concurrency leases (only those it holds)."""
        expiry = int(time.time() * 1000) + self.lease_ms
        for key in keys.rate_scopes(account_id, model, deployment)[3::4]:
            pipe.zadd(key, {job_id: expiry}, xx=True)
