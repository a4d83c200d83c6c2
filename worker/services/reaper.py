"""The reaper: hands back the jobs of dead workers and lost messages (``worker/queue/recovery.py``),
in one worker of the fleet at a time, about every third of a lease."""

from __future__ import annotations

import logging
import random
import time

from shared import keys
from shared.settings import Settings
from worker.queue.recovery import Recovery
from worker.services.base import Service

log = logging.getLogger(__name__)


class Reaper(Service):
    name = "reaper"
    failure = "reaper pass failed"
    lock = keys.REAPER_LOCK
    hold_lock = True  # one pass per interval in the whole fleet

    def __init__(self, recovery: Recovery, settings: Settings):
        self.recovery = recovery
        self.settings = settings
        self.every = max(settings.lease_seconds / 3, 1.0)
        self.lock_ms = int(self.every * 1000)

    def interval(self) -> float:
        return self.every * random.uniform(0.8, 1.2)

    async def run_pass(self) -> None:
        for job_id in await self.recovery.lapsed_jobs(time.time()):
            if await self.recovery.requeue_lapsed(job_id):
                log.warning("requeued a job whose worker was lost", extra={"job_id": job_id})
        older_than = 2 * self.settings.lease_seconds
        for job_id in await self.recovery.requeue_unclaimed(older_than=older_than,
                                                            visibility_timeout=self.settings.visibility_timeout):
            log.warning("requeued a job delivered to a worker that never started it", extra={"job_id": job_id})
        for job_id in await self.recovery.requeue_lost(older_than=older_than):
            log.warning("requeued a job whose queue message was lost on its way to a worker",
                        extra={"job_id": job_id})
