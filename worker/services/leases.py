"""The lease keeper: every 250 ms, which running jobs of the process were cancelled (one MGET of
their flags); every third of a lease, the renewal of their job leases and concurrency leases
(one pipelined round trip for all jobs of the process). An attempt whose lease was lost, or whose job was cancelled, is
stopped (``RunningJob.stop``)."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio.cluster import RedisCluster

from shared import keys
from shared.jobs import JobStore
from shared.settings import Settings
from worker.attempt import RunningJob
from worker.limits import Limiter
from worker.services.base import Service

CANCEL_POLL_SECONDS = 0.25


class LeaseKeeper(Service):
    name = "lease keeper"
    failure = "could not check running jobs"

    def __init__(self, store: JobStore, limiter: Limiter, settings: Settings, running: dict[str, RunningJob]):
        self.store = store
        self.limiter = limiter
        self.settings = settings
        self.running = running
        self.renew_every = settings.lease_seconds / 3
        self.last_renew = 0.0

    def interval(self) -> float:
        return CANCEL_POLL_SECONDS

    async def due(self) -> bool:
        return any(entry.owned for entry in self.running.values())

    async def run_pass(self) -> None:
        jobs = [(entry.job_id, entry) for entry in self.running.values() if entry.owned]
        renew = time.monotonic() - self.last_renew >= self.renew_every
        if not renew and not isinstance(self.store.redis, RedisCluster):
            # The cancel flags of every running job in one command: a thousand streams' poll,
            # four times a second, as one MGET rather than a thousand EXISTS in a pipeline.
            cancel_keys = [keys.job_cancel(job_id) for job_id, _ in jobs]
            if self.store.channel is not None:
                flags = await self.store.channel.command("MGET", *cancel_keys)
            else:
                flags = await self.store.redis.mget(cancel_keys)
            self._act(jobs, flags, range(len(jobs)), renew)
            return
        if renew and isinstance(self.store.redis, RedisCluster):
            results = await self._renew_on_cluster(jobs)
            self.last_renew = time.monotonic()
            self._act(jobs, results, range(len(jobs)), renew)
            return
        replies: list[int] = []  # index, in the pipeline's results, of each job's answer
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id, entry in jobs:
                replies.append(len(pipe))
                if renew:
                    await self.store.scripts.renew_lease(
                        keys=[keys.job_lease(job_id), keys.running_of(job_id), keys.job_cancel(job_id)],
                        args=[entry.token, int(self.settings.lease_seconds * 1000), repr(time.time()), job_id],
                        client=pipe,
                    )
                    if entry.limits:
                        account_id, model, deployment, key_id = entry.limits
                        self.limiter.renew_leases(pipe, job_id=job_id, account_id=account_id, model=model,
                                                  deployment=deployment, key_id=key_id)
                else:  # on a cluster: the flags live in many slots
                    pipe.exists(keys.job_cancel(job_id))
            results = await pipe.execute()
        if renew:
            self.last_renew = time.monotonic()
        self._act(jobs, results, replies, renew)

    async def _renew_on_cluster(self, jobs) -> list:
        """The renewals where a pipeline may not carry scripts (Redis Cluster): the scripts sent
        together, each to its job's node, then the limits' leases in one pipeline."""
        results = await asyncio.gather(*(self.store.scripts.renew_lease(
            keys=[keys.job_lease(job_id), keys.running_of(job_id), keys.job_cancel(job_id)],
            args=[entry.token, int(self.settings.lease_seconds * 1000), repr(time.time()), job_id],
        ) for job_id, entry in jobs))
        limited = [(job_id, entry.limits) for job_id, entry in jobs if entry.limits]
        if limited:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for job_id, (account_id, model, deployment, key_id) in limited:
                    self.limiter.renew_leases(pipe, job_id=job_id, account_id=account_id, model=model,
                                              deployment=deployment, key_id=key_id)
                await pipe.execute()
        return results

    def _act(self, jobs, results, replies, renew: bool) -> None:
        for (_, entry), index in zip(jobs, replies):
            result = results[index]
            if renew:
                owned, cancel = result
                if not owned:
                    entry.stop("lost")
                elif cancel:
                    entry.stop("cancel")
            elif result:
                entry.stop("cancel")
