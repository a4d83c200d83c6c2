"""The one task: run a job, by id. The job's content stays in Redis, never in the message."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from celery import signals

from shared import keys
from worker.celery_app import app
from worker.metrics import start_worker_metrics_server
from worker.queue.pool import TaskPool as LoopPool
from worker.queue.pool import finished_attempt
from worker.runtime import current_runtime, get_runtime, stop_runtime

log = logging.getLogger(__name__)

PRESTART_TIMEOUT_SECONDS = 10


@app.task(name=keys.RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    ran = finished_attempt()  # the job already ran on the loop (worker/queue/pool.py)
    if ran is not None:
        return ran.result()
    return get_runtime().run_job(job_id)


@signals.worker_ready.connect
def _start_runtime(sender=None, **_):
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else None
    if sender is not None and not isinstance(getattr(sender, "pool", None), LoopPool):
        # Celery's plain threads pool (``-P threads``): each job holds a pool thread.
        try:
            _prestart_threads(getattr(sender, "pool", None))
        except Exception as exc:  # a speed-up: the threads still start on demand
            log.warning("could not start the pool's threads ahead: %s", exc)
    get_runtime(hostname=sender.hostname if sender is not None else None, queues=queues)
    start_worker_metrics_server()


@signals.worker_shutting_down.connect
def _begin_shutdown(**_):
    from shared.settings import get_settings

    runtime = current_runtime()
    if runtime is not None:
        runtime.begin_shutdown(get_settings().shutdown_grace_seconds)


@signals.worker_shutdown.connect
def _stop_runtime(**_):
    stop_runtime()


def _prestart_threads(pool) -> None:
    """Start every thread of the pool now, while the worker is idle.

    Celery's thread pool (a ThreadPoolExecutor) starts a thread for each job that finds none
    idle, up to the concurrency, and ``Thread.start`` waits until the new thread has run. Under
    load that handshake needs the GIL, held by the loop thread relaying streams: taking 1,000
    jobs off the queue took 17 s while streams ran, and cost a third of the process's CPU. The
    threads are started here instead, parked on a barrier until all of them exist."""
    executor = getattr(pool, "executor", None)
    limit = getattr(pool, "limit", None)
    if not isinstance(executor, ThreadPoolExecutor) or not limit or getattr(executor, "_threads", None):
        return  # not Celery's thread pool, or already running jobs (a busy thread would hold the barrier)
    started = time.monotonic()
    barrier = threading.Barrier(limit + 1)
    for _ in range(limit):
        executor.submit(barrier.wait, PRESTART_TIMEOUT_SECONDS)
    try:
        barrier.wait(PRESTART_TIMEOUT_SECONDS)
    except threading.BrokenBarrierError:  # some threads are late; they start on demand anyway
        log.warning("the pool's threads did not all start within %d s", PRESTART_TIMEOUT_SECONDS)
        return
    log.info("started the pool's %d threads in %.2f s", limit, time.monotonic() - started)


_ping_redis = None


@app.task(name="chatfleet.ping", ignore_result=True)
def ping(counter_key: str) -> None:
    """A bare Celery round trip for ``bench.throughput``: INCR a counter, nothing else."""
    global _ping_redis
    if _ping_redis is None:
        from shared.connections import sync_redis
        from shared.settings import get_settings

        _ping_redis = sync_redis(get_settings().redis_url)
    _ping_redis.incr(counter_key)
