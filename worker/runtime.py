"""The worker process's engine: one asyncio loop, on a thread of its own, that runs every job of
the process and its background services.

Provider calls are I/O: a process holds hundreds of them at once. The worker's Celery pool
(``worker/queue/pool.py``) submits each job's coroutine to this loop, which multiplexes all the
network calls. Beside the jobs the loop runs the services of ``worker/services`` (lease keeper,
heartbeat, reaper, throttle scheduler, batch feeder). This module wires them together and owns
the process's lifecycle: start-up, the grace period of a warm shutdown, and the stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid

from shared import keys
from shared.brokers import broker_for
from shared.catalog import get_catalog
from shared.connections import async_redis
from shared.gcfreeze import freeze_startup_objects
from shared.jobs import JobStore
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings, get_settings
from worker.attempt import RunningJob
from worker.providers.local import LocalProvider
from worker.providers.registry import Providers
from worker.queue import pool
from worker.queue.recovery import Recovery
from worker.runner import JobRunner
from worker.services.base import Service, run_service
from worker.services.batch_feeder import BatchFeeder
from worker.services.heartbeat import Heartbeat
from worker.services.leases import LeaseKeeper
from worker.services.reaper import Reaper
from worker.services.sweeper import AccountsSweeper
from worker.services.throttle import ThrottleScheduler
from worker.services.webhooks import WebhookDelivery, WebhookFanout

log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux and macOS): the loop's own overhead per callback,
    timer and socket read is a fair share of a worker's CPU at thousands of tokens a second."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
            entry.stop("shutdown")

    def run_job(self, job_id: str) -> str:
        """Run one job to its end; blocks the calling (pool) thread, not the loop."""
        self._started.wait()
        attempt = self.submit_job(job_id)
        assert attempt is not None  # submitted: the runtime has started
        return attempt.result()

    def submit_job(self, job_id: str) -> concurrent.futures.Future | None:
        """Start one job on the loop without waiting (``worker/queue/pool.py``); None until the runtime
        has started."""
        if not self._started.is_set():
            return None
        return asyncio.run_coroutine_threadsafe(self._run_job(job_id), self.loop)

    # --- inside the loop ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _startup(self) -> None:
        self.redis = async_redis(self.settings.state_url, max_connections=self.settings.worker_concurrency + 20)
        self.channel = ScriptChannel.for_url(self.settings.state_url)  # the jobs' script calls
        self.broker = broker_for(self.redis, self.channel, self.settings)
        self.store = JobStore(self.redis, self.settings, self.channel, self.broker)
        self.providers = Providers(self.settings)
        self.runner = JobRunner(self.store, get_catalog(self.settings.catalog_path), self.providers, self.settings)
        if keys.QUEUE_LOCAL in self.queues:
            local = self.providers.get("local")
            if isinstance(local, LocalProvider):
                await self.loop.run_in_executor(None, local.model.load)
        self.heartbeat = Heartbeat(self.redis, self.settings, self.hostname, self.queues, lambda: len(self.running))
        self.services: list[Service] = [
            LeaseKeeper(self.store, self.runner.limiter, self.settings, self.running),
            self.heartbeat,
            Reaper(Recovery(self.redis, self.store.scripts, self.broker), self.settings),
            ThrottleScheduler(self.store),
            BatchFeeder(self.store, self.settings),
            WebhookFanout(self.redis, self.settings),
            WebhookDelivery(self.redis, self.settings),
            AccountsSweeper(self.store, self.settings),
        ]
        freeze_startup_objects()
        # Only once everything loaded: the heartbeat is what tells /readyz this worker serves.
        self._background = [
            asyncio.create_task(run_service(service, self.redis, self.store.scripts, self.hostname), name=service.name)
            for service in self.services
        ]

    async def _shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        with contextlib.suppress(Exception):
            if self.providers is not None:  # None: the start-up failed before it made them
                await self.providers.close()
        with contextlib.suppress(Exception):
            await self.heartbeat.leave()
            await self.broker.close()
            await self.redis.aclose()
        if self.channel is not None:
            await self.channel.close()

    async def _run_job(self, job_id: str) -> str:
        token = f"{self.hostname}/{uuid.uuid4().hex[:12]}"
        task = asyncio.current_task()
        assert task is not None  # run_coroutine_threadsafe runs it as a task
        entry = RunningJob(job_id, token, task)
        # Keyed by attempt: a duplicate delivery of the same job in this process must not
        # displace the attempt that owns it.
        self.running[token] = entry
        try:
            return await self.runner.run(job_id, token, entry)
        finally:
            del self.running[token]


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
            pool.hand_jobs_to(_runtime.submit_job)
        return _runtime


def current_runtime() -> WorkerRuntime | None:
    """The process's runtime if it was started (never starts one)."""
    return _runtime if _runtime_pid == os.getpid() else None


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            pool.hand_jobs_to(None)
            _runtime.stop()
        _runtime = None
