"""The one task: run a job, by id. The job's content stays in Redis, never in the message."""

from __future__ import annotations

import logging

from celery import signals
from celery.exceptions import Reject

from shared import keys
from worker.celery_app import app
from worker.metrics import start_worker_metrics_server
from worker.queue.pool import finished_attempt
from worker.runner import StateStoreUnavailable
from worker.runtime import current_runtime, get_runtime, stop_runtime

log = logging.getLogger(__name__)


@app.task(name=keys.RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    ran = finished_attempt()  # the job already ran on the loop (worker/queue/pool.py)
    try:
        if ran is not None:
            return ran.result()
        return get_runtime().run_job(job_id)
    except StateStoreUnavailable as exc:
        # Back to its queue, for this worker or another once the state store answers.
        raise Reject(str(exc), requeue=True) from exc


@signals.worker_ready.connect
def _start_runtime(sender=None, **_):
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else None
    start_worker_metrics_server()  # first: the runtime's first heartbeat says where it serves
    get_runtime(hostname=sender.hostname if sender is not None else None, queues=queues)


@signals.worker_shutting_down.connect
def _begin_shutdown(**_):
    from shared.settings import get_settings

    runtime = current_runtime()
    if runtime is not None:
        runtime.begin_shutdown(get_settings().shutdown_grace_seconds)


@signals.worker_shutdown.connect
def _stop_runtime(**_):
    stop_runtime()


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
