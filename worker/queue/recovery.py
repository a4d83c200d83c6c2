"""Finding jobs the queue lost, and queueing them again: the reaper's three sweeps.

A job can be stranded three ways, each found here and handed back to its queue by one script
(``lua/requeue_*.lua``) that checks, atomically, that it really is stranded:

- its worker died while running it: the attempt's lease lapsed unrenewed (``requeue_lapsed``);
- its worker died holding its message, never started: kombu keeps the message unacknowledged
  until the visibility timeout (``requeue_unclaimed``);
- its message was lost between kombu's BRPOP and its unacknowledged record, a worker killed in
  that instant: the job stays queued with no message anywhere (``requeue_lost``).

A job queued twice by a race with a live worker runs once: each attempt must claim it.
"""

from __future__ import annotations

import time

from shared import keys
from shared.queue import run_job_message, stored_job_id
from shared.scripts import Scripts


class Recovery:
    def __init__(self, redis, scripts: Scripts):
        self.redis = redis
        self.scripts = scripts

    async def lapsed_jobs(self, now: float) -> list[str]:
        return await self.redis.zrangebyscore(keys.RUNNING_JOBS, "-inf", now, start=0, num=500)

    async def requeue_lapsed(self, job_id: str) -> bool:
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:
            await self.redis.zrem(keys.RUNNING_JOBS, job_id)
            return False
        return bool(await self.scripts.requeue_lapsed(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, queue, keys.QUEUED_JOBS],
            args=[job_id, repr(time.time()), run_job_message(job_id, queue)],
        ))

    async def requeue_unclaimed(self, older_than: float) -> list[str]:
        """Jobs whose message a worker took but never started (it died holding them).

        Celery prefetches at most as many messages as a worker has threads, so a live worker
        starts every message it takes at once, and the job's claim follows within moments. A
        message still unacknowledged after ``older_than`` seconds whose job was never claimed
        belongs to a dead worker; the broker would only give it back after the visibility
        timeout. Such a job is queued again now and the stale entry dropped (if the worker was
        alive after all, its late start finds the job taken and does nothing)."""
        cutoff = time.time() - older_than
        tags = await self.redis.zrangebyscore(keys.UNACKED_INDEX, "-inf", cutoff, start=0, num=1000)
        if not tags:
            return []
        payloads = await self.redis.hmget(keys.UNACKED, tags)
        requeued = []
        for tag, payload in zip(tags, payloads):
            if payload is None:
                await self.redis.zrem(keys.UNACKED_INDEX, tag)
                continue
            job_id = stored_job_id(payload)
            if job_id is None:
                continue
            status, queue, updated = await self.redis.hmget(keys.job(job_id), "status", "queue", "updated_at")
            # Most held messages are those of running jobs: those are passed over here, and the
            # script checks again, atomically, the few that look stranded.
            if status != "queued" or queue is None or float(updated or 0) > cutoff:
                continue
            if await self.scripts.requeue_unclaimed(
                keys=[keys.job(job_id), queue, keys.QUEUED_JOBS, keys.UNACKED, keys.UNACKED_INDEX],
                args=[job_id, tag, repr(time.time()), run_job_message(job_id, queue), repr(cutoff)],
            ):
                requeued.append(job_id)
        return requeued

    async def requeue_lost(self, older_than: float) -> list[str]:
        """Jobs queued more than ``older_than`` seconds ago whose message is neither on their
        queue nor held by a worker: lost between kombu's BRPOP and its unacked record (a
        worker killed in that instant). Each gets a new message (``lua/requeue_lost.lua``)."""
        now = time.time()
        cutoff = now - older_than
        candidates = await self.redis.zrangebyscore(keys.QUEUED_JOBS, "-inf", cutoff, start=0, num=200)
        requeued = []
        for job_id in candidates:
            queue = await self.redis.hget(keys.job(job_id), "queue")
            if queue is None:
                await self.redis.zrem(keys.QUEUED_JOBS, job_id)
                continue
            outcome = await self.scripts.requeue_lost(
                keys=[keys.job(job_id), queue, keys.QUEUED_JOBS, keys.UNACKED],
                args=[job_id, repr(now), run_job_message(job_id, queue), repr(cutoff)],
            )
            if outcome == "requeued":
                requeued.append(job_id)
        return requeued
