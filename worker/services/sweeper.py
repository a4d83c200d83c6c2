"""The accounts sweeper: what a lost worker left undone in the accounts' slots. One worker of
the fleet at a time, once a second.

- Budget holds (``lua/admit.lua``) are settled by the attempt that finishes the job, right after
  it (``lua/settle.lua``). A hold whose watch lapsed (its worker was lost, or the job ended with
  no worker: its deliveries were used up) is settled here from the job's record, which keeps
  the cost the finish billed: exactly once, as the attempt would have (the hold is the proof
  that it is still owed). A job still queued, waiting or running keeps its hold: its next
  attempt is admitted on it (no second reservation).
- Fair share hands an account's held-back jobs out as its queued ones are taken, in admission;
  an account listed in ``keys.fair_accounts`` that nobody admitted for a while gets its free
  places handed out here, and jobs handed out whose release a lost worker never made are
  released again (``lua/release_job.lua`` queues each once).
"""

from __future__ import annotations

import time

import orjson

from shared import keys
from shared.jobs import JobStore
from shared.settings import Settings
from worker.limits import Crossing, announce, budget_keys
from worker.services.base import Service

SWEEP_SECONDS = 1.0
LOOK_AGAIN_MS = 10_000  # a handed-out job still held back after this long was not released
BATCH = 100
TERMINAL = ("succeeded", "failed", "cancelled")


class AccountsSweeper(Service):
    name = "accounts sweeper"
    failure = "accounts sweeper pass failed"
    lock = keys.lock("accounts-sweeper")
    lock_ms = 10_000

    def __init__(self, store: JobStore, settings: Settings):
        self.store = store
        self.redis = store.redis
        self.settings = settings

    def interval(self) -> float:
        return SWEEP_SECONDS

    async def _due(self, now_ms: int, fair_before_ms: int) -> tuple[list[str], list[str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.ACCOUNT_SHARDS):
                pipe.zrangebyscore(keys.budget_due(shard), "-inf", now_ms, start=0, num=BATCH)
                pipe.zrangebyscore(keys.fair_accounts(shard), "-inf", fair_before_ms, start=0, num=BATCH)
            found = await pipe.execute()
        return ([m for listed in found[::2] for m in listed], [m for listed in found[1::2] for m in listed])

    async def due(self) -> bool:
        now = int(time.time() * 1000)
        holds, accounts = await self._due(now, now - LOOK_AGAIN_MS)
        return bool(holds or accounts)

    async def run_pass(self) -> None:
        now = int(time.time() * 1000)
        holds, accounts = await self._due(now, now - LOOK_AGAIN_MS)
        for member in holds:
            await self.sweep_hold(member)
        for member in accounts:
            await self.fill(member)

    async def sweep_hold(self, member: str) -> list[Crossing]:
        """Settle, or watch again, one budget hold (``{account}|{job}``)."""
        account_id, _, job_id = member.rpartition("|")
        record = await self.redis.hmget(keys.job(job_id), "status", "usage", "key_id")
        status, usage, key_id = record
        if status is not None and status not in TERMINAL:
            # Queued, waiting or running: its next attempt settles it. Watched again a lease later.
            await self.redis.zadd(keys.budget_due_of(account_id),
                                  {member: int(time.time() * 1000) + int(self.settings.lease_seconds * 1000)},
                                  xx=True)
            return []
        hold = await self.redis.hget(keys.budget_holds(account_id), job_id)
        if hold is None:  # settled meanwhile (by its attempt)
            await self.redis.zrem(keys.budget_due_of(account_id), member)
            return []
        key_id = key_id or hold.split("|")[2]
        cost = 0
        if usage:
            try:
                cost = round(float(orjson.loads(usage).get("cost_usd") or 0) * 1e9)
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                cost = 0
        # A job gone (expired) or ended unbilled gives its hold back and spends nothing.
        replies = await self.store.scripts.settle_budget(keys=budget_keys(account_id, key_id),
                                                         args=[job_id, account_id, cost])
        crossings = [Crossing.parse(account_id, key_id, r) for r in replies]
        for crossing in crossings:
            await announce(self.redis, crossing)
        return crossings

    async def fill(self, member: str) -> int:
        """Hand out an account's free places on a queue (``{account}|{queue}``)."""
        account_id, _, queue = member.rpartition("|")
        if queue not in keys.QUEUES:
            await self.redis.zrem(keys.fair_accounts_of(account_id), member)
            return 0
        job_ids = await self.store.scripts.fair_fill(
            keys=[keys.fair_queued(account_id, queue), keys.fair_ready(account_id, queue),
                  keys.fair_accounts_of(account_id)],
            # Fair share turned off meanwhile: what was held back goes at once.
            args=[int(time.time() * 1000), self.settings.fair_share_places(queue) or 10_000,
                  int(self.settings.fair_share_stale_seconds * 1000), member, LOOK_AGAIN_MS],
        )
        if not job_ids:
            return 0
        return await self.store.release(queue, list(job_ids))

