"""Finding jobs the queue lost, and queueing them again: the reaper's three sweeps.

A job can be stranded three ways, each found here and handed back to its queue by one script
(``lua/requeue_*.lua``) that checks, atomically in the state store, that it really is stranded,
and stages a new message, which is then pushed to the broker (``shared/brokers/``):

- its worker died while running it: the attempt's lease lapsed unrenewed (``requeue_lapsed``);
- its message never reached a worker, or its worker died holding it, never started: the job
  stays queued with its message on no list (``requeue_lost``). Workers hold the messages they
  took in memory only (``worker/celery_app.py``: no ack emulation on Redis), so a message
  taken by a worker that died is on no list either. On RabbitMQ, a message is held once the
  broker confirmed it, and a dead worker's come back at once: only those never confirmed are
  pushed again;
- its worker, of an earlier version that kept kombu's unacked hash, died holding its message
  (``requeue_unclaimed``: such a message would otherwise come back only after kombu's
  visibility timeout).

What the broker holds is read from the broker before the script runs: a message taken in
between is delivered twice. A job queued twice runs once: each attempt must claim it.
"""

from __future__ import annotations

import time

from shared import keys
from shared.brokers import Broker, RedisBroker
from shared.queue import run_job_message, stored_job_id
from shared.scripts import Scripts

ENDED = ("succeeded", "failed", "cancelled")


class Recovery:
    """``redis`` the state store, ``broker`` Celery's (the state store's Redis unless given)."""

    def __init__(self, redis, scripts: Scripts, broker: Broker | None = None):
        self.redis = redis
        self.scripts = scripts
        self.broker: Broker = broker or RedisBroker(redis)

    async def _oldest(self, index, before: float, num: int) -> list[str]:
        """Members scored before ``before`` in every shard's ``index(shard)``, up to ``num`` each."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.zrangebyscore(index(shard), "-inf", before, start=0, num=num)
            return [member for found in await pipe.execute() for member in found]

    async def lapsed_jobs(self, now: float) -> list[str]:
        return await self._oldest(keys.running_jobs, now, 100)

    async def requeue_lapsed(self, job_id: str) -> bool:
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:
            await self.redis.zrem(keys.running_of(job_id), job_id)
            return False
        message = run_job_message(job_id, queue)
        if not await self.scripts.requeue_lapsed(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.queued_of(job_id)],
            args=[job_id, repr(time.time()), message],
        ):
            return False
        await self.broker.push(queue, message)
        return True

    async def requeue_unclaimed(self, older_than: float, visibility_timeout: float = 3600.0) -> list[str]:
        """Jobs whose message a worker of an earlier version (one that kept kombu's unacked hash)
        took but never started (it died holding them).

        Celery prefetches at most as many messages as a worker has threads, so a live worker
        starts every message it takes at once, and the job's claim follows within moments. A
        message still unacknowledged after ``older_than`` seconds whose job was never claimed
        belongs to a dead worker; the broker would only give it back after the visibility
        timeout. Such a job is queued again now and the stale entry dropped (if the worker was
        alive after all, its late start finds the job taken and does nothing)."""
        cutoff = time.time() - older_than
        broker = self.broker.redis
        if broker is None:  # RabbitMQ: it gives a dead worker's messages back itself, at once
            return []
        scored = await broker.zrangebyscore(keys.UNACKED_INDEX, "-inf", cutoff, start=0, num=1000, withscores=True)
        if not scored:
            return []
        tags = [tag for tag, _ in scored]
        payloads = await broker.hmget(keys.UNACKED, tags)
        requeued = []
        expired = time.time() - visibility_timeout
        for (tag, held_since), payload in zip(scored, payloads):
            if payload is None:
                await broker.zrem(keys.UNACKED_INDEX, tag)
                continue
            job_id = stored_job_id(payload)
            status, queue, updated = (await self.redis.hmget(keys.job(job_id), "status", "queue", "updated_at")
                                      if job_id is not None else (None, None, None))
            if job_id is None or status is None or status in ENDED or (status != "queued" and held_since < expired):
                # Not a job's, its job gone or ended, or held past kombu's visibility timeout by
                # a worker that runs it (its lease looks after it): no worker of this version
                # sweeps kombu's hash, so the stale entry goes here; left, it would stay among
                # the oldest read each pass. A running job's entry stays while its worker may
                # still acknowledge it.
                async with broker.pipeline(transaction=True) as pipe:
                    pipe.hdel(keys.UNACKED, tag)
                    pipe.zrem(keys.UNACKED_INDEX, tag)
                    await pipe.execute()
                continue
            # Most held messages are those of running jobs: those are passed over here, and the
            # script checks again, atomically, the few that look stranded.
            if status != "queued" or queue is None or float(updated or 0) > cutoff:
                continue
            message = run_job_message(job_id, queue)
            if await self.scripts.requeue_unclaimed(
                keys=[keys.job(job_id), keys.queued_of(job_id)],
                args=[job_id, repr(time.time()), message, repr(cutoff)],
            ):
                await self.broker.push(queue, message)
                # The stale entry goes once the job's new message is on its queue.
                async with broker.pipeline(transaction=True) as pipe:
                    pipe.hdel(keys.UNACKED, tag)
                    pipe.zrem(keys.UNACKED_INDEX, tag)
                    await pipe.execute()
                requeued.append(job_id)
        return requeued

    async def requeue_lost(self, older_than: float) -> list[str]:
        """Jobs queued more than ``older_than`` seconds ago whose message is on no list (nor in
        the unacked hash of a worker of an earlier version): taken by a worker that died before
        it claimed the job, or never pushed. Each gets a new message (``lua/requeue_lost.lua``).
        A live worker claims a job within moments of taking its message; one that claims it
        later than this finds it taken and does nothing."""
        now = time.time()
        cutoff = now - older_than
        candidates = await self._oldest(keys.queued_jobs, cutoff, 50)
        requeued = []
        for job_id in candidates:
            queue, status, message = await self.redis.hmget(keys.job(job_id), "queue", "status", "message")
            if queue is None:  # expired
                await self.redis.zrem(keys.queued_of(job_id), job_id)
                continue
            if status == "queued" and message is not None and await self.broker.held(queue, message):
                await self.redis.zadd(keys.queued_of(job_id), {job_id: now}, xx=True)  # look again one cutoff later
                continue
            # The script decides, atomically: a job that moved on meanwhile is left alone.
            new = run_job_message(job_id, queue)
            outcome = await self.scripts.requeue_lost(
                keys=[keys.job(job_id), keys.queued_of(job_id)],
                args=[job_id, repr(now), new, repr(cutoff), message or ""],
            )
            if outcome == "requeued":
                await self.broker.push(queue, new)
                requeued.append(job_id)
        return requeued
