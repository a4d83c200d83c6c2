"""Celery's threads pool, with jobs started on the worker's event loop instead of in a thread.

Every job runs on the runtime's loop (``worker/runtime.py``, which hands the pool its way in:
``hand_jobs_to``). Through Celery's threads pool, each
job also held a pool thread for its whole life, blocked on the loop's answer: two hand-overs
between threads per job (Celery's consumer → pool thread → loop), a thousand parked threads
for a thousand streams, and a pool thread that must win the GIL from a loop thread busy relaying
before a job can even start. Here Celery's consumer hands the job to the loop itself
(``call_soon_threadsafe``); when the job ends, one of a few completion threads runs Celery's
usual trace of the task (signals, state, the late ack, task events) with the job's outcome.

Celery's semantics stay: the message is acknowledged only after the job ended (acks late), the
request is "active" from its start (``inspect active``, Flower), a job that raised fails its
task, and the run time Celery logs and reports (task-succeeded) is the job's. One difference:
``task_prerun`` and ``task_postrun`` are sent together, once the job has ended. Any other task
(``chatfleet.ping``), and a job that arrives before the runtime has started, goes to the
threads pool as before. A warm shutdown waits for the jobs on the loop and their acks before
the pool stops (at most the grace period and ``STOP_MARGIN_SECONDS``).

Selected by ``worker_pool`` in ``worker/celery_app.py`` (a worker started without ``-P``);
``-P threads`` still works, each job then blocking a pool thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.concurrency import thread
from celery.concurrency.base import apply_target

from shared import keys
from shared.queue import body_job_id

log = logging.getLogger(__name__)

#: Threads that run the tasks' traces and acks once their jobs ended. An ack is one Redis round
#: trip; a few threads keep up with thousands of jobs a second.
COMPLETION_THREADS = 4
#: How long a warm shutdown waits, beyond the grace period, for the jobs handed back to end.
STOP_MARGIN_SECONDS = 15

_finished = threading.local()
# Where this process's jobs start: (the process, the runtime's ``submit_job``), set by the runtime.
_jobs_go_to: tuple[int, Callable[[str], concurrent.futures.Future | None]] | None = None


def hand_jobs_to(submit: Callable[[str], concurrent.futures.Future | None] | None) -> None:
    """From now on, the jobs this process's pool is given start through ``submit`` (the runtime's
    ``submit_job``: the job on its loop, or None while it is still starting); None: no more."""
    global _jobs_go_to
    _jobs_go_to = (os.getpid(), submit) if submit is not None else None


def _submitter() -> Callable[[str], concurrent.futures.Future | None] | None:
    where = _jobs_go_to
    return where[1] if where is not None and where[0] == os.getpid() else None  # not a forked parent's


def finished_attempt() -> concurrent.futures.Future | None:
    """Inside ``run_job`` called by a completion thread: the outcome of the job the loop ran."""
    return _finished.__dict__.pop("outcome", None)


def _job_id(args: tuple) -> str | None:
    """The job id of a ``run_job`` task (its only argument), from the arguments Celery gives
    the pool: (task name, task id, request, body, content type, content encoding)."""
    if len(args) < 5 or args[0] != keys.RUN_JOB_TASK or args[4] != "application/json":
        return None
    return body_job_id(args[3])


class _JobRuntime(logging.Filter):
    """Celery's "Task ... succeeded in Ns" line, with the job's run time: the trace that logs it
    runs once the job has ended, and would time only itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        runtime = getattr(_finished, "runtime", None)
        if runtime is not None and isinstance(record.args, dict) and "runtime" in record.args:
            record.args = {**record.args, "runtime": runtime}
        return True


logging.getLogger("celery.app.trace").addFilter(_JobRuntime())


class TaskPool(thread.TaskPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from shared.settings import get_settings

        # On RabbitMQ, one: kombu's AMQP connection is not safe to share between threads, so the
        # jobs' acks come from this one thread. Each is one small frame, written by one send
        # (as the consumer's own heartbeats and QoS updates are); tasks that go to the threads
        # pool (a job arriving before the runtime started, ``chatfleet.ping``) ack from their
        # thread, as under Celery's own threads pool.
        threads = 1 if get_settings().broker_is_amqp else COMPLETION_THREADS
        self._completions = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="chatfleet-ack")
        self._on_loop = 0  # jobs started on the loop whose trace has not finished
        self._idle = threading.Condition()

    def on_apply(self, target: Callable, args: tuple | None = None, kwargs: dict | None = None,
                 callback: Callable | None = None, accept_callback: Callable | None = None, **options: Any):
        submit = _submitter()
        job_id = _job_id(args) if args else None
        attempt = submit(job_id) if job_id is not None and submit is not None else None
        if attempt is None:  # not a job, or the runtime is still starting: a pool thread takes it
            return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
        assert args is not None  # a job's: its arguments named it
        started = time.monotonic()
        with self._idle:
            self._on_loop += 1
        try:
            if accept_callback:
                accept_callback(os.getpid(), started)
        except Exception:  # e.g. its task-started event not sent: the job still ends and is acked
            log.exception("accepting job %s failed", job_id)
        finally:
            attempt.add_done_callback(lambda done: self._completions.submit(
                self._complete, target, args, kwargs, callback, done, started))
        return thread.ApplyResult(attempt)

    def _complete(self, target: Callable, args: tuple, kwargs: dict | None, callback: Callable | None,
                  attempt: concurrent.futures.Future, started: float) -> None:
        runtime = time.monotonic() - started

        def on_traced(result: tuple) -> None:  # (failed, value, run time): the job's run time
            if callback:
                callback((result[0], result[1], runtime))

        try:
            _finished.outcome, _finished.runtime = attempt, runtime
            apply_target(target, args, kwargs, on_traced)
        except Exception:  # Celery's trace handles the task's errors; this would be the trace's own
            log.exception("completing job %s failed", args[1])
        finally:
            _finished.__dict__.pop("outcome", None)
            _finished.__dict__.pop("runtime", None)
            with self._idle:
                self._on_loop -= 1
                if not self._on_loop:
                    self._idle.notify_all()

    def on_stop(self) -> None:
        """A warm shutdown: the runtime hands the jobs still running back to the queue after the
        grace period (``worker/tasks.py``); wait for them and their acks, within a bound, so that a
        job stuck on a dead Redis does not keep the process from exiting (its unacked message is
        restored when the connection closes, and the job's lease fences any duplicate)."""
        from shared.settings import get_settings

        bound = get_settings().shutdown_grace_seconds + STOP_MARGIN_SECONDS
        with self._idle:
            idle = self._idle.wait_for(lambda: not self._on_loop, bound)
            left = self._on_loop
        if not idle:
            log.warning("%d jobs still running %d s into the shutdown; leaving them to the queue", left, bound)
        self._completions.shutdown(wait=idle, cancel_futures=not idle)
        super().on_stop()
