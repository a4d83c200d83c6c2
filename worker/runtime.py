"""The worker process's engine: one asyncio loop that runs every job of the process.

Provider calls are I/O: a process holds hundreds of them at once. The worker's Celery pool
(``worker.pool``) submits each job's coroutine to this loop, which multiplexes all the network
calls. Around the jobs the loop keeps, for the whole process and in batched Redis round trips:
lease renewal, cancellation checks, a heartbeat, and the reaper that hands back jobs whose
worker died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from shared import keys
from shared.catalog import get_catalog
from shared.connections import async_redis
from shared.gcfreeze import freeze_startup_objects
from shared.jobs import JobStore
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings, get_settings
from worker.providers.local import LocalProvider
from worker.providers.registry import Providers
from worker.runner import JobRunner

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.25
SCHEDULER_SECONDS = 0.025
BATCH_FEED_SECONDS = 0.1
BATCH_CHUNK = 500


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux and macOS): the loop's own overhead per callback,
    timer and socket read is a fair share of a worker's CPU at thousands of tokens a second."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class RunningJob:
    job_id: str
    token: str
    task: asyncio.Task
    reason: str | None = None
    # (account, model, deployment) while the job holds concurrency leases.
    limits: tuple[str, str, str] | None = None
    # Whether the attempt holds the job's lease (only then is it renewed and watched).
    owned: bool = False


class WorkerRuntime:
    def __init__(self, settings: Settings, hostname: str, queues: list[str]):
        self.settings = settings
        self.hostname = hostname
        self.queues = queues
        self.running: dict[str, RunningJob] = {}
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="chatfleet-loop", daemon=True)
        self._background: list[asyncio.Task] = []
        self._started = threading.Event()
        self.providers: Providers | None = None
        self.channel: ScriptChannel | None = None

    # --- lifecycle (called from Celery's threads) -------------------------------------------

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._startup(), self.loop).result()
        except Exception:
            # A worker that cannot serve its queues must not look alive (heartbeat) while
            # holding jobs forever: stop the process, loudly, so that it is restarted or seen.
            log.critical("worker runtime failed to start; exiting", exc_info=True)
            logging.shutdown()
            os._exit(3)
        self._started.set()

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def begin_shutdown(self, grace_seconds: float) -> None:
        """SIGTERM: Celery stops taking jobs; those running get ``grace_seconds`` to finish,
        then are handed back to the queue for other workers to continue."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._hand_back_after(grace_seconds)))

    async def _hand_back_after(self, grace_seconds: float) -> None:
        deadline = time.monotonic() + grace_seconds
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for entry in list(self.running.values()):
            self._stop(entry, "shutdown")

    def run_job(self, job_id: str) -> str:
        """Run one job to its end; blocks the calling (pool) thread, not the loop."""
        self._started.wait()
        return self.submit_job(job_id).result()

    def submit_job(self, job_id: str) -> concurrent.futures.Future | None:
        """Start one job on the loop without waiting (``worker.pool``); None until the runtime
        has started."""
        if not self._started.is_set():
            return None
        return asyncio.run_coroutine_threadsafe(self._run_job(job_id), self.loop)

    # --- inside the loop ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _startup(self) -> None:
        self.redis = async_redis(self.settings.redis_url, max_connections=self.settings.worker_concurrency + 20)
        self.channel = ScriptChannel.for_url(self.settings.redis_url)  # the jobs' script calls
        self.store = JobStore(self.redis, self.settings, self.channel)
        self.providers = Providers(self.settings)
        self.runner = JobRunner(self.store, get_catalog(self.settings.catalog_path), self.providers, self.settings)
        if keys.QUEUE_LOCAL in self.queues:
            local = self.providers.get("local")
            if isinstance(local, LocalProvider):
                await self.loop.run_in_executor(None, local.model.load)
        freeze_startup_objects()
        # Only once everything loaded: the heartbeat is what tells /readyz this worker serves.
        self._background = [
            asyncio.create_task(self._watch_running(), name="watch-running"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._reap_lapsed(), name="reaper"),
            asyncio.create_task(self._release_throttled(), name="throttle-scheduler"),
            asyncio.create_task(self._feed_batches(), name="batch-feeder"),
        ]

    async def _shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.providers.close()
        with contextlib.suppress(Exception):
            await self.redis.zrem(keys.WORKERS, self.hostname)
            await self.redis.delete(keys.worker(self.hostname))
            await self.redis.aclose()
        if self.channel is not None:
            await self.channel.close()

    async def _run_job(self, job_id: str) -> str:
        token = f"{self.hostname}/{uuid.uuid4().hex[:12]}"
        entry = RunningJob(job_id, token, asyncio.current_task())
        # Keyed by attempt: a duplicate delivery of the same job in this process must not
        # displace the attempt that owns it.
        self.running[token] = entry
        try:
            return await self.runner.run(job_id, token, entry)
        finally:
            del self.running[token]

    async def _watch_running(self) -> None:
        """Every 250 ms: which running jobs were cancelled; every lease/3: renew their job leases
        and concurrency leases. One pipelined round trip for all jobs of the process."""
        renew_every = self.settings.lease_seconds / 3
        last_renew = 0.0
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if not self.running:
                continue
            jobs = [(entry.job_id, entry) for entry in self.running.values() if entry.owned]
            if not jobs:
                continue
            renew = time.monotonic() - last_renew >= renew_every
            replies: list[int] = []  # index, in the pipeline's results, of each job's answer
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id, entry in jobs:
                        replies.append(len(pipe))
                        if renew:
                            await self.store.scripts.renew_lease(
                                keys=[keys.job_lease(job_id), keys.RUNNING_JOBS, keys.job_cancel(job_id)],
                                args=[entry.token, int(self.settings.lease_seconds * 1000), repr(time.time()), job_id],
                                client=pipe,
                            )
                            if entry.limits:
                                account_id, model, deployment = entry.limits
                                self.runner.limiter.renew_leases(pipe, job_id=job_id, account_id=account_id,
                                                                 model=model, deployment=deployment)
                        else:
                            pipe.exists(keys.job_cancel(job_id))
                    results = await pipe.execute()
            except Exception as exc:
                log.warning("could not check running jobs: %s", exc)
                continue
            if renew:
                last_renew = time.monotonic()
            for (job_id, entry), index in zip(jobs, replies):
                result = results[index]
                if renew:
                    owned, cancel = result
                    if not owned:
                        self._stop(entry, "lost")
                    elif cancel:
                        self._stop(entry, "cancel")
                elif result:
                    self._stop(entry, "cancel")

    @staticmethod
    def _stop(entry: RunningJob, reason: str) -> None:
        # Re-checked after the round trip: an attempt that has meanwhile finished or parked
        # its job released the lease itself and must not be interrupted.
        if entry.reason is None and entry.owned:
            entry.reason = reason
            entry.task.cancel()

    async def _heartbeat(self) -> None:
        while True:
            try:
                now = time.time()
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(keys.worker(self.hostname), mapping={
                        "hostname": self.hostname, "queues": ",".join(self.queues),
                        "pid": os.getpid(), "running": len(self.running), "seen_at": repr(now),
                    })
                    pipe.expire(keys.worker(self.hostname), int(self.settings.worker_heartbeat_seconds * 3) + 1)
                    pipe.zadd(keys.WORKERS, {self.hostname: now})
                    await pipe.execute()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.worker_heartbeat_seconds)

    async def _release_throttled(self) -> None:
        """Give each account whose wait is over its first waiting job back (in order); the
        rest follow as each is admitted. One worker of the fleet does it at a time."""
        interval = SCHEDULER_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                # One round trip per tick while nothing is due (the usual case): every worker
                # runs this loop 40 times a second.
                if not await self._due_accounts(1):
                    continue
                holder = self._lock_token()
                if not await self.redis.set(keys.SCHEDULER_LOCK, holder, nx=True, px=int(interval * 1000 * 5)):
                    continue
                due = await self._due_accounts(200)
                for account_id in due:
                    head = await self.redis.zrange(keys.account_waiting(account_id), 0, 0)
                    if not head:
                        await self.store.scripts.release_account(
                            keys=[keys.account_waiting(account_id), keys.THROTTLED_ACCOUNTS], args=[account_id])
                    else:
                        await self.store.requeue_waiting(head[0], account_id)
                await self.store.scripts.release_lock(keys=[keys.SCHEDULER_LOCK], args=[holder])
            except Exception as exc:
                log.warning("throttle scheduler pass failed: %s", exc)

    def _lock_token(self) -> str:
        """Who holds a fleet-wide lock, for this one acquisition: released only by its taker."""
        return f"{self.hostname}/{uuid.uuid4().hex[:12]}"

    async def _due_accounts(self, limit: int) -> list[str]:
        return await self.redis.zrangebyscore(keys.THROTTLED_ACCOUNTS, "-inf", int(time.time() * 1000),
                                              start=0, num=limit)

    async def _feed_batches(self) -> None:
        """Hand staged batch lines to the queue in chunks, within the fleet-wide in-flight
        budget and round robin across batches; drain cancelled and expired batches."""
        while True:
            await asyncio.sleep(BATCH_FEED_SECONDS)
            try:
                if not await self.redis.exists(keys.ACTIVE_BATCHES):  # one round trip while idle
                    continue
                holder = self._lock_token()
                if not await self.redis.set(keys.BATCH_FEEDER_LOCK, holder, nx=True, px=30_000):
                    continue
                try:
                    await self._feed_pass()
                finally:
                    await self.store.scripts.release_lock(keys=[keys.BATCH_FEEDER_LOCK], args=[holder])
            except Exception as exc:
                log.warning("batch feeder pass failed: %s", exc)

    async def _feed_pass(self) -> None:
        active = await self.redis.zrange(keys.ACTIVE_BATCHES, 0, -1)
        if not active:
            return
        in_flight = int(await self.redis.get(keys.BATCH_IN_FLIGHT) or 0)
        budget = self.settings.batch_max_in_flight - in_flight
        share = max(budget // len(active), 1) if budget > 0 else 0
        now = time.time()
        for batch_id in active:
            record = await self.redis.hgetall(keys.batch(batch_id))
            if not record:
                await self.redis.zrem(keys.ACTIVE_BATCHES, batch_id)
                continue
            if not record.get("ending") and float(record.get("expires_at") or "inf") < now:
                await self.redis.hset(keys.batch(batch_id), mapping={"ending": "expired"})
                record["ending"] = "expired"
            if record.get("ending"):
                await self._wind_down(batch_id, record)
                continue
            if share <= 0 or record.get("status") != "in_progress":
                continue
            entries = await self.redis.lrange(keys.batch_pending(batch_id), 0, min(share, BATCH_CHUNK) - 1)
            if entries:
                await self.store.feed_batch(batch_id, record["account_id"], entries)

    async def _wind_down(self, batch_id: str, record: dict[str, str]) -> None:
        """A cancelled or expired batch: lines never handed out become error lines; lines that
        were are cancelled like any job (running ones stop, queued ones never start)."""
        ending = record["ending"]
        message = ("the batch was cancelled before this request ran" if ending == "cancelled"
                   else "the batch's completion window ended before this request ran")
        await self.store.scripts.drain_batch(
            keys=[keys.batch(batch_id), keys.batch_pending(batch_id), keys.batch_errors(batch_id),
                  keys.ACTIVE_BATCHES],
            args=[BATCH_CHUNK, f"batch_{ending}", message, repr(time.time()), batch_id],
        )
        if record.get("wound_down"):
            return
        async for job_id in self.redis.sscan_iter(keys.batch_jobs(batch_id), count=500):
            job = await self.redis.hmget(keys.job(job_id), "status", "model")
            if job[0] and job[0] not in ("succeeded", "failed", "cancelled"):
                await self.store.cancel(job_id, record["account_id"], job[1], batch_id)
        await self.redis.hset(keys.batch(batch_id), "wound_down", "1")

    async def _reap_lapsed(self) -> None:
        """Hand back the jobs of dead workers: their leases lapsed without being renewed."""
        interval = max(self.settings.lease_seconds / 3, 1.0)
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                if not await self.redis.set(keys.REAPER_LOCK, self.hostname, nx=True, px=int(interval * 1000)):
                    continue
                for job_id in await self.store.lapsed_jobs(time.time()):
                    if await self.store.requeue_lapsed(job_id):
                        log.warning("requeued a job whose worker was lost", extra={"job_id": job_id})
                for job_id in await self.store.requeue_unclaimed(older_than=2 * self.settings.lease_seconds):
                    log.warning("requeued a job delivered to a worker that never started it",
                                extra={"job_id": job_id})
                for job_id in await self.store.requeue_lost(older_than=2 * self.settings.lease_seconds):
                    log.warning("requeued a job whose queue message was lost on its way to a worker",
                                extra={"job_id": job_id})
            except Exception as exc:
                log.warning("reaper pass failed: %s", exc)


_runtime: WorkerRuntime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def get_runtime(hostname: str | None = None, queues: list[str] | None = None) -> WorkerRuntime:
    """The process's runtime, started on first use (once per process, fork-safe)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = WorkerRuntime(
                get_settings(), hostname or f"worker@{socket.gethostname()}:{os.getpid()}",
                queues or [keys.QUEUE_INTERACTIVE, keys.QUEUE_LOCAL],
            )
            _runtime_pid = os.getpid()
            _runtime.start()
        return _runtime


def current_runtime() -> WorkerRuntime | None:
    """The process's runtime if it was started (never starts one)."""
    return _runtime if _runtime_pid == os.getpid() else None


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.stop()
        _runtime = None
