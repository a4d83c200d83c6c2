"""Celery's threads pool, with jobs started on the worker's event loop instead of in a thread.

Every job runs on the runtime's loop (``worker.runtime``). Through Celery's threads pool, each
job also held a pool thread for its whole life, blocked on the loop's answer: two hand-overs
between threads per job (Celery's consumer → pool thread → loop), a thousand parked threads
for a thousand streams, and a pool thread that must win the GIL from a loop thread busy relaying
before a job can even start. Here Celery's consumer hands the job to the loop itself
(``call_soon_threadsafe``); when the job ends, one of a few completion threads runs Celery's
usual trace of the task (signals, state, the late ack, task events) with the job's outcome.

Celery's semantics stay: the message is acknowledged only after the job ended (acks late), the
request is "active" from its start (``inspect active``, Flower), a job that raised fails its
task. Any other task (``chatfleet.ping``), and a job that arrives before the runtime has
started, goes to the threads pool as before. A warm shutdown waits for the jobs on the loop and
their acks before the pool stops.

Selected by ``worker_pool`` in ``worker.celery_app`` (a worker started without ``-P``);
``-P threads`` still works, each job then blocking a pool thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from typing import Any, Callable

import orjson
from celery.concurrency import thread
from celery.concurrency.base import apply_target

from shared import keys

log = logging.getLogger(__name__)

#: Threads that run the tasks' traces and acks once their jobs ended. An ack is one Redis round
#: trip; a few threads keep up with thousands of jobs a second.
COMPLETION_THREADS = 4

_finished = threading.local()


def finished_attempt() -> concurrent.futures.Future | None:
    """Inside ``run_job`` called by a completion thread: the outcome of the job the loop ran."""
    return _finished.__dict__.pop("outcome", None)


def _job_id(args: tuple) -> str | None:
    """The job id of a ``run_job`` task (its only argument), from the arguments Celery gives
    the pool: (task name, task id, request, body, content type, content encoding)."""
    if len(args) < 5 or args[0] != keys.RUN_JOB_TASK or args[4] != "application/json":
        return None
    body = args[3]
    try:
        positional = orjson.loads(bytes(body) if isinstance(body, memoryview) else body)[0]
    except (orjson.JSONDecodeError, TypeError, IndexError, KeyError):
        return None
    if len(positional) != 1 or not isinstance(positional[0], str):
        return None
    return positional[0]


class TaskPool(thread.TaskPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._completions = concurrent.futures.ThreadPoolExecutor(COMPLETION_THREADS,
                                                                  thread_name_prefix="chatfleet-ack")
        self._on_loop = 0  # jobs started on the loop whose trace has not finished
        self._idle = threading.Condition()

    def on_apply(self, target: Callable, args: tuple | None = None, kwargs: dict | None = None,
                 callback: Callable | None = None, accept_callback: Callable | None = None, **options: Any):
        from worker.runtime import current_runtime

        runtime = current_runtime()
        job_id = _job_id(args) if args else None
        if job_id is None or runtime is None:
            return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
        try:
            attempt = runtime.submit_job(job_id)
        except RuntimeError as exc:  # its loop has stopped (the worker is going down)
            log.warning("could not start job %s on the loop: %s", job_id, exc)
            attempt = None
        if attempt is None:  # the runtime is still starting (or gone): a pool thread takes it
            return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
        with self._idle:
            self._on_loop += 1
        if accept_callback:
            accept_callback(os.getpid(), time.monotonic())
        attempt.add_done_callback(
            lambda done: self._completions.submit(self._complete, target, args, kwargs, callback, done))
        return thread.ApplyResult(attempt)

    def _complete(self, target: Callable, args: tuple, kwargs: dict | None, callback: Callable | None,
                  attempt: concurrent.futures.Future) -> None:
        try:
            _finished.outcome = attempt
            apply_target(target, args, kwargs, callback)
        except Exception:  # Celery's trace handles the task's errors; this would be the trace's own
            log.exception("completing job %s failed", args[1])
        finally:
            _finished.__dict__.pop("outcome", None)
            with self._idle:
                self._on_loop -= 1
                if not self._on_loop:
                    self._idle.notify_all()

    def on_stop(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: not self._on_loop)
        self._completions.shutdown(wait=True)
        super().on_stop()

    def _get_info(self) -> dict:
        info = super()._get_info()
        with self._idle:
            info["jobs-on-loop"] = self._on_loop
        return info
