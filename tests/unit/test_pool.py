"""The worker's pool (worker/queue/pool.py): jobs start on the loop, Celery's trace runs when they end."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import time
from unittest.mock import Mock

import orjson
import pytest
from celery.contrib.testing.mocks import TaskMessage
from celery.worker import state as worker_state
from celery.worker.request import Request

from shared import keys
from shared.queue import run_job_message
from tests.helpers import wait_for
from worker.queue import pool as loop_pool
from worker.tasks import app


def hand_jobs_to(monkeypatch, runtime) -> None:
    """The pool's jobs go to ``runtime`` (None: there is none yet), as ``worker/runtime.py`` sets it."""
    monkeypatch.setattr(loop_pool, "_jobs_go_to", None)
    loop_pool.hand_jobs_to(runtime.submit_job if runtime is not None else None)


def celery_args(job_id: str, body: bytes | memoryview | None = None, task: str = keys.RUN_JOB_TASK,
                content_type: str = "application/json") -> tuple:
    """What Celery's request hands the pool: (task, id, request, body, content type, encoding)."""
    if body is None:
        body = base64.b64decode(orjson.loads(run_job_message(job_id, keys.QUEUE_INTERACTIVE))["body"])
    return (task, job_id, {}, body, content_type, "utf-8")


class StubRuntime:
    def __init__(self, started: bool = True):
        self.started = started
        self.attempts: dict[str, concurrent.futures.Future] = {}
        self.submitted_from: list[str] = []

    def submit_job(self, job_id: str):
        if not self.started:
            return None
        self.submitted_from.append(threading.current_thread().name)
        future = self.attempts[job_id] = concurrent.futures.Future()
        return future


class Trace:
    """Stands for Celery's trace: calls the task body the way ``worker.tasks.run_job`` does."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __call__(self, task, task_id, request, body, content_type, content_encoding):
        ran = loop_pool.finished_attempt()
        self.calls.append((task_id, threading.current_thread().name))
        if ran is None:
            return ("ran in a pool thread", task_id)
        try:
            return ("ran on the loop", ran.result())
        except Exception as exc:
            return ("failed", repr(exc))


@pytest.fixture
def pool():
    p = loop_pool.TaskPool(limit=8)
    p.start()
    yield p
    p.stop()


def test_the_job_id_is_read_from_the_message_body():
    assert loop_pool._job_id(celery_args("job_1")) == "job_1"
    body = celery_args("job_2")[3]
    assert loop_pool._job_id(celery_args("job_2", memoryview(body))) == "job_2"
    assert loop_pool._job_id(celery_args("job_3", task="chatfleet.ping")) is None
    assert loop_pool._job_id(celery_args("job_4", content_type="application/x-python-serialize")) is None
    assert loop_pool._job_id(celery_args("job_5", b"not json")) is None
    assert loop_pool._job_id(celery_args("job_6", orjson.dumps([["a", "b"], {}, {}]))) is None
    assert loop_pool._job_id(celery_args("job_7", orjson.dumps([[7], {}, {}]))) is None


def celery_request(job_id: str) -> tuple[Request, Mock, Mock]:
    """A real Celery request for a run_job message, as the worker's consumer builds it."""
    app.set_current()
    on_ack, eventer = Mock(name="ack"), Mock(name="eventer")
    message = TaskMessage(keys.RUN_JOB_TASK, id=job_id, args=[job_id])
    request = Request(message, on_ack=on_ack, eventer=eventer, app=app, task=app.tasks[keys.RUN_JOB_TASK])
    return request, on_ack, eventer


def sent(eventer: Mock, kind: str) -> list[dict]:
    return [c.kwargs for c in eventer.send.call_args_list if c.args[0] == kind]


class WatchedCompletions:
    """The pool's completion threads, keeping every trace (and so every ack) they were handed."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor):
        self.executor = executor
        self.handed: list[concurrent.futures.Future] = []

    def submit(self, fn, *args, **kwargs) -> concurrent.futures.Future:
        future = self.executor.submit(fn, *args, **kwargs)
        self.handed.append(future)
        return future

    def __getattr__(self, name: str):
        return getattr(self.executor, name)


class WatchedCondition(threading.Condition):
    """The pool's idle condition, saying when somebody blocks on it (a shutdown waiting)."""

    def __init__(self):
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def test_a_job_starts_on_the_loop_is_active_while_it_runs_and_is_acked_once_it_ended(pool, monkeypatch):
    runtime = StubRuntime()
    hand_jobs_to(monkeypatch, runtime)
    completions = pool._completions = WatchedCompletions(pool._completions)
    idle = pool._idle = WatchedCondition()
    order: list[str] = []
    request, on_ack, eventer = celery_request("job_1")
    on_ack.side_effect = lambda *args, **kwargs: order.append("acked")
    request.execute_using_pool(pool)
    accepted = time.monotonic()
    # Accepted at once, from the consumer's thread: "active" for as long as the job runs.
    assert runtime.submitted_from == [threading.current_thread().name]
    assert request in worker_state.active_requests
    assert sent(eventer, "task-started")
    # Acks late: whatever the completion threads were handed so far has run, and none of it
    # acked the job while it runs.
    done, _ = concurrent.futures.wait(completions.handed, timeout=60)
    assert len(done) == len(completions.handed)
    on_ack.assert_not_called()

    def stop():
        pool.stop()
        order.append("stopped")

    stopping = threading.Thread(target=stop)  # a warm shutdown waits for the job and its ack
    stopping.start()
    wait_for(lambda: idle.waiting.is_set() or not stopping.is_alive(), what="the shutdown to wait or end")
    assert stopping.is_alive() and order == []  # blocked on the job, which still runs, unacked
    while time.monotonic() - accepted < 0.5:  # a job that ran at least 0.5 s
        time.sleep(0.05)
    held = time.monotonic() - accepted
    runtime.attempts["job_1"].set_result("succeeded")
    stopping.join(60)
    assert not stopping.is_alive()
    on_ack.assert_called_once()
    assert order == ["acked", "stopped"]  # the shutdown ended only once the job was acked
    assert request not in worker_state.active_requests
    (succeeded,) = sent(eventer, "task-succeeded")
    assert succeeded["result"] == repr("succeeded")
    assert succeeded["runtime"] >= held  # the job's run time, not the trace's


def test_a_job_that_raised_fails_its_task_and_is_acked(pool, monkeypatch):
    runtime = StubRuntime()
    hand_jobs_to(monkeypatch, runtime)
    request, on_ack, eventer = celery_request("job_1")
    request.execute_using_pool(pool)
    runtime.attempts["job_1"].set_exception(ValueError("boom"))
    wait_for(lambda: on_ack.called, what="the ack")
    on_ack.assert_called_once()  # task_acks_on_failure_or_timeout: a failed job is not redelivered
    (failed,) = sent(eventer, "task-failed")
    assert "boom" in failed["exception"]
    assert not sent(eventer, "task-succeeded")


def test_a_job_whose_acceptance_failed_still_ends_and_is_acked(pool, monkeypatch):
    runtime = StubRuntime()
    hand_jobs_to(monkeypatch, runtime)
    request, on_ack, _ = celery_request("job_1")
    monkeypatch.setattr(request, "on_accepted", Mock(side_effect=ConnectionError("events down")))
    request.execute_using_pool(pool)
    runtime.attempts["job_1"].set_result("succeeded")
    wait_for(lambda: on_ack.called, what="the ack")
    wait_for(lambda: pool._on_loop == 0, what="the job's completion")


@pytest.mark.parametrize("runtime", [None, StubRuntime(started=False)], ids=["no runtime", "runtime starting"])
def test_other_tasks_and_early_jobs_go_to_a_pool_thread(pool, monkeypatch, runtime):
    hand_jobs_to(monkeypatch, runtime)
    trace, done = Trace(), []
    finished = threading.Barrier(3)
    pool.apply_async(trace, args=celery_args("job_1"), callback=lambda ret: (done.append(ret), finished.wait(60)))
    pool.apply_async(trace, args=celery_args("p1", task="chatfleet.ping"),
                     callback=lambda ret: (done.append(ret), finished.wait(60)))
    finished.wait(60)
    assert sorted(done) == [("ran in a pool thread", "job_1"), ("ran in a pool thread", "p1")]
    assert all(not name.startswith("chatfleet-ack") for _, name in trace.calls)


def test_a_task_that_is_not_a_job_never_reaches_the_loop(pool, monkeypatch):
    runtime = StubRuntime()
    hand_jobs_to(monkeypatch, runtime)
    finished = threading.Event()
    pool.apply_async(Trace(), args=celery_args("p1", task="chatfleet.ping"), callback=lambda ret: finished.set())
    assert finished.wait(60)
    assert runtime.attempts == {}
