"""The throttle scheduler: gives each account whose wait is over its first waiting job back (in
submission order); the rest follow as each is admitted. One worker of the fleet at a time."""

from __future__ import annotations

import time

from shared import keys
from shared.jobs import JobStore
from worker.services.base import Service

TICK_SECONDS = 0.025


class ThrottleScheduler(Service):
    name = "throttle scheduler"
    failure = "throttle scheduler pass failed"
    lock = keys.SCHEDULER_LOCK
    lock_ms = int(TICK_SECONDS * 1000 * 5)

    def __init__(self, store: JobStore):
        self.store = store
        self.redis = store.redis

    def interval(self) -> float:
        return TICK_SECONDS

    async def _due_accounts(self, limit: int) -> list[str]:
        """Accounts whose wake-up time has come, from every account shard's index."""
        now = int(time.time() * 1000)
        channel = self.store.channel
        if channel is not None:  # 40 times a second in every worker: the lighter way
            found = await channel.commands(*(("ZRANGEBYSCORE", keys.throttled_accounts(shard), "-inf", now,
                                              "LIMIT", 0, limit) for shard in range(keys.ACCOUNT_SHARDS)))
            return [account for due in found for account in due]
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.ACCOUNT_SHARDS):
                pipe.zrangebyscore(keys.throttled_accounts(shard), "-inf", now, start=0, num=limit)
            return [account for due in await pipe.execute() for account in due]

    async def due(self) -> bool:
        # One round trip (a command per account shard) per tick while nothing is due (the usual
        # case): every worker looks 40 times a second.
        return bool(await self._due_accounts(1))

    async def run_pass(self) -> None:
        for account_id in await self._due_accounts(50):
            head = await self.redis.zrange(keys.account_waiting(account_id), 0, 0)
            if not head:
                await self.store.scripts.release_account(
                    keys=[keys.account_waiting(account_id), keys.throttled_of(account_id)], args=[account_id])
            else:
                await self.store.requeue_waiting(head[0], account_id)
