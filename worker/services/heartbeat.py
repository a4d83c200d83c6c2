"""The worker's heartbeat: what it consumes and when it last reported, for ``/readyz``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from shared import keys
from shared.settings import Settings
from worker import metrics
from worker.services.base import Service


class Heartbeat(Service):
    name = "heartbeat"

    def __init__(self, redis, settings: Settings, hostname: str, queues: list[str], running: Callable[[], int]):
        self.redis = redis
        self.settings = settings
        self.hostname = hostname
        self.queues = queues
        self.running = running

    failure = "heartbeat failed"

    def interval(self) -> float:
        return self.settings.worker_heartbeat_seconds

    def first_delay(self) -> float:
        return 0.0  # at once: the first heartbeat is what tells /readyz this worker serves

    async def run_pass(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.worker(self.hostname), mapping={
                "hostname": self.hostname, "queues": ",".join(self.queues),
                "pid": os.getpid(), "running": self.running(), "seen_at": repr(now),
                # The local model's parallel slots here, which the batch feeder budgets by.
                "local_slots": self.settings.local_model_slots if keys.QUEUE_LOCAL in self.queues else 0,
                # Where its metrics are scraped (0: nowhere), for /readyz and the ready line.
                "metrics_port": metrics.serving_port() or 0,
            })
            pipe.expire(keys.worker(self.hostname), int(self.settings.worker_heartbeat_seconds * 3) + 1)
            pipe.zadd(keys.WORKERS, {self.hostname: now})
            await pipe.execute()

    async def leave(self) -> None:
        """The worker stops: it no longer counts for ``/readyz``."""
        await self.redis.zrem(keys.WORKERS, self.hostname)
        await self.redis.delete(keys.worker(self.hostname))
