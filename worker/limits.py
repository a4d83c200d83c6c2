"""Per-account and per-deployment rate limits, enforced atomically in Redis for the whole fleet.

A limit of N per minute admits at most N in any window of ``CHATFLEET_RATE_WINDOW_SECONDS``
(60): a sliding log of admissions, not a fixed window (which lets 2N through at a boundary)
nor a token bucket (which lets a burst of N follow a full minute). Admission is one Lua script
(``lua/admit.lua``): requests, estimated tokens (``JobSpec.reserved_tokens``: the prompt's high
estimate plus the job's completion bound) and a concurrency lease,
across the account, the account's per-model override and the API key's own limits, with the
job's worst-case cost held against the account's and the key's budgets (``budget_usd`` a day, a
month or in total), all or nothing, in the account's slot;
then, where the provider deployment has limits, a second in the deployment's
(``lua/admit_deployment.lua``), whose refusal gives the first back (``lua/unadmit.lua``). After
the call, ``settle`` replaces the estimate with the real count, frees the lease and spends the
real cost in place of the worst case. Leases expire
on their own, so a killed worker cannot lock an account out. The API
reads what is left of the account's limits for its response headers (``api/ratelimit.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared import keys
from shared.catalog import ModelSpec
from shared.jobs import line_score
from shared.jobspec import JobSpec
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts
from shared.settings import Settings
from shared.usage import cost_nanousd
from shared.webhooks import emit


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
    # The account's jobs that fair share held back and this admission handed out (the caller
    # queues them: ``JobStore.release``).
    released: list[str] = field(default_factory=list)
    # Over budget: the budget that has no room left (announced as crossed at 100 %).
    crossing: Crossing | None = None
    # Whether a budget holds the job's worst case (a fallback model may then cost no more).
    budgeted: bool = False


def budget_periods(now: float) -> tuple[str, str]:
    """The ids of the day and the month (UTC) budgets are counted in at ``now``."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    return moment.date().isoformat(), moment.strftime("%Y-%m")


def budget_keys(account_id: str, key_id: str) -> list[str]:
    """The six keys of a job's budget hold (``lua/_budget.lua``), in the account's slot."""
    return [keys.budget_holds(account_id), keys.budget_due_of(account_id), keys.account(account_id),
            keys.key_limits(account_id, key_id), keys.budget(account_id), keys.budget(account_id, key_id or "-")]


def worst_cost_nanousd(model: ModelSpec, job: JobSpec) -> int:
    """What the job may cost at most at the model's prices: the prompt at its highest estimate
    and the whole completion bound (an embedding job: its inputs at their highest estimate)."""
    completion = 0 if job.embed is not None else job.params.max_tokens
    return cost_nanousd(model, job.reserved_tokens - completion, completion)


def account_scopes(account_id: str, model: str, key_id: str) -> list[str]:
    """The 12 rate-limit keys of the account's three scopes (account, model, key)."""
    return [*keys.account_rate(account_id), *keys.account_model_rate(account_id, model),
            *keys.key_rate(account_id, key_id)]


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
        key_id: str = "", cost_nanousd: int = 0, priority: str = "default", queue: str = "", attempt: int = 1,
    ) -> Admission:
        """Admit the job; ``cost_nanousd`` is its worst case (held against the budgets), ``queue``
        the broker list it came from (fair share: its account's place there is free now)."""
        dep_rpm, dep_tpm = deployment_rpm or None, deployment_tpm or None  # 0: no limit
        if dep_tpm is not None and tokens > dep_tpm:  # could never be admitted: do not wait
            return Admission("too_large", reason=f"provider deployment tokens-per-window limit is {dep_tpm}, "
                                                 f"the request needs up to {tokens}")
        now = time.time()
        now_ms = int(now * 1000)
        day, month = budget_periods(now)
        scopes = account_scopes(account_id, model, key_id)
        score = repr(line_score(priority, submitted_at))
        result = await self.scripts.admit(
            keys=[keys.account(account_id), keys.account_waiting(account_id), keys.throttled_of(account_id),
                  *scopes, keys.key_limits(account_id, key_id), keys.budget(account_id),
                  keys.budget(account_id, key_id or "-"), keys.budget_holds(account_id),
                  keys.budget_due_of(account_id), keys.fair_queued(account_id, queue),
                  keys.fair_ready(account_id, queue), keys.fair_accounts_of(account_id)],
            args=[now_ms, self.window_ms, job_id, tokens, self.lease_ms, account_id, score, model, key_id,
                  cost_nanousd, day, month, self.settings.fair_share_places(queue) if queue else 0, queue,
                  attempt],
        )
        released = [j for j in result[1].split(",") if j]
        if result[0] == "waiting":
            return Admission("waiting", retry_at=int(result[2]) / 1000, reason=result[3], released=released)
        if result[0] == "over_budget":
            return Admission("over_budget", reason=result[2], released=released,
                             crossing=Crossing.parse(account_id, key_id, result[3]))
        if result[0] != "admitted":
            return Admission("too_large", reason=result[2], released=released)
        admission = Admission("admitted", next_job=result[2], holds=result[3] == "1", released=released,
                              budgeted=result[5] == "1")
        if dep_rpm is not None or dep_tpm is not None:
            dep = await self.scripts.admit_deployment(
                keys=keys.deployment_rate(deployment),
                args=[now_ms, self.window_ms, job_id, tokens, self.lease_ms, dep_rpm or -1, dep_tpm or -1],
            )
            if dep[0] == "waiting":
                await self.scripts.unadmit(
                    keys=[keys.account_waiting(account_id), keys.throttled_of(account_id), *scopes,
                          *budget_keys(account_id, key_id)[:2], keys.budget(account_id),
                          keys.budget(account_id, key_id or "-")],
                    args=[job_id, account_id, score, dep[1]],
                )
                return Admission("waiting", retry_at=int(dep[1]) / 1000, reason=dep[2], released=released)
            admission.holds = admission.deployment_holds = True
        if result[4] == "1":
            # Each admission is a provider call about to be made (not one made again): the job's
            # bill, should its workers all be lost, counts the prompts sent (shared/jobs.py).
            await self.scripts.count_admission(keys=[keys.job(job_id)], args=[f"{now_ms / 1000:.3f}"])
        return admission

    async def settle(self, *, job_id: str, account_id: str, model: str, deployment: str, tokens: int,
                     deployment_holds: bool = True, key_id: str = "", cost_nanousd: int | None = 0) -> Settled:
        """Record the real token count and cost, and free the job's slots (the deployment's too,
        where they hold anything of it): the account's next waiting job ("" if none), and the
        budget thresholds the cost crossed. ``cost_nanousd`` None: the budget hold stays (the job
        did not end in this attempt)."""
        if deployment_holds:
            await self.scripts.settle(keys=keys.deployment_rate(deployment), args=[job_id, tokens, "0"])
        budget = cost_nanousd is not None
        result = await self.scripts.settle(
            keys=[keys.account_waiting(account_id), *account_scopes(account_id, model, key_id),
                  *(budget_keys(account_id, key_id) if budget else [])],
            args=[job_id, tokens, "1", "1" if budget else "0", cost_nanousd or 0, account_id])
        return Settled(result[0], [Crossing.parse(account_id, key_id, a) for a in result[1:]])

    def renew_leases(self, pipe, *, job_id: str, account_id: str, model: str, deployment: str,
                     key_id: str = "") -> None:
        """Queue on ``pipe`` the renewal of the job's concurrency leases (only those it holds)
        and of its budget hold's watch."""
        expiry = int(time.time() * 1000) + self.lease_ms
        for key in [*account_scopes(account_id, model, key_id), *keys.deployment_rate(deployment)][3::4]:
            pipe.zadd(key, {job_id: expiry}, xx=True)
        pipe.zadd(keys.budget_due_of(account_id), {f"{account_id}|{job_id}": expiry}, xx=True)


@dataclass
class Crossing:
    """A budget's spend newly past 80 % or 100 % of it (``lua/_budget.lua``)."""

    scope: str  # account | key
    account_id: str
    key_id: str
    period_id: str
    percent: int
    budget_nanousd: int
    spent_nanousd: int

    @classmethod
    def parse(cls, account_id: str, key_id: str, reply: str) -> Crossing:
        scope, period_id, percent, budget, spent = reply.split("|")
        return cls(scope, account_id, key_id if scope == "key" else "", period_id, int(percent), int(budget),
                   int(spent))


@dataclass
class Settled:
    next_job: str
    crossings: list[Crossing]


async def announce(redis, crossing: Crossing) -> None:
    """The ``budget.threshold`` webhook of a budget whose spend crossed 80 % or 100 %, once per
    scope, period and threshold."""
    scope_id = crossing.key_id if crossing.scope == "key" else crossing.account_id
    pid = crossing.period_id
    period = "total" if pid == "total" else "day" if len(pid) == 10 else "month"
    await emit(redis, "budget.threshold", {
        "scope": crossing.scope, "account_id": crossing.account_id, "key_id": crossing.key_id or None,
        "period": period, "period_id": pid, "threshold": crossing.percent / 100,
        "budget_usd": crossing.budget_nanousd / 1e9, "spent_usd": crossing.spent_nanousd / 1e9,
    }, account_id=crossing.account_id,
        key=f"budget:{crossing.scope}:{scope_id}:{crossing.period_id}:{crossing.percent}")
