"""The worker's pool (worker/pool.py): jobs start on the loop, Celery's trace runs when they end."""

from __future__ import annotations

import base64
import concurrent.futures
import threading

import orjson
import pytest

from shared import keys
from shared.taskmessage import run_job_message
from worker import pool as loop_pool
from worker import runtime as worker_runtime


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


def test_a_job_starts_on_the_loop_and_is_traced_and_acked_when_it_ends(pool, monkeypatch):
    runtime = StubRuntime()
    monkeypatch.setattr(worker_runtime, "current_runtime", lambda: runtime)
    trace, accepted, done = Trace(), [], []
    finished = threading.Event()

    def on_success(ret):
        done.append(ret)
        finished.set()

    pool.apply_async(trace, args=celery_args("job_1"), callback=on_success,
                     accept_callback=lambda pid, t: accepted.append(threading.current_thread().name))
    # Accepted at once, in the consumer's thread: "active" for as long as the job runs.
    assert accepted == [threading.current_thread().name]
    assert runtime.submitted_from == [threading.current_thread().name]
    assert not finished.wait(0.2) and trace.calls == []  # no trace, no ack while it runs

    stopping = threading.Thread(target=pool.stop)  # a warm shutdown waits for the job and its ack
    stopping.start()
    assert not finished.wait(0.2)
    assert stopping.is_alive()
    runtime.attempts["job_1"].set_result("succeeded")
    assert finished.wait(5)
    stopping.join(5)
    assert not stopping.is_alive()
    assert done == [("ran on the loop", "succeeded")]
    assert trace.calls[0][1].startswith("chatfleet-ack")


def test_a_job_that_raised_fails_its_task(pool, monkeypatch):
    runtime = StubRuntime()
    monkeypatch.setattr(worker_runtime, "current_runtime", lambda: runtime)
    trace, done = Trace(), []
    finished = threading.Event()
    pool.apply_async(trace, args=celery_args("job_1"), callback=lambda ret: (done.append(ret), finished.set()))
    runtime.attempts["job_1"].set_exception(ValueError("boom"))
    assert finished.wait(5)
    assert done == [("failed", "ValueError('boom')")]


@pytest.mark.parametrize("runtime", [None, StubRuntime(started=False)], ids=["no runtime", "runtime starting"])
def test_other_tasks_and_early_jobs_go_to_a_pool_thread(pool, monkeypatch, runtime):
    monkeypatch.setattr(worker_runtime, "current_runtime", lambda: runtime)
    trace, done = Trace(), []
    finished = threading.Barrier(3)
    pool.apply_async(trace, args=celery_args("job_1"), callback=lambda ret: (done.append(ret), finished.wait(5)))
    pool.apply_async(trace, args=celery_args("p1", task="chatfleet.ping"),
                     callback=lambda ret: (done.append(ret), finished.wait(5)))
    finished.wait(5)
    assert sorted(done) == [("ran in a pool thread", "job_1"), ("ran in a pool thread", "p1")]
    assert all(not name.startswith("chatfleet-ack") for _, name in trace.calls)


def test_a_task_that_is_not_a_job_never_reaches_the_loop(pool, monkeypatch):
    runtime = StubRuntime()
    monkeypatch.setattr(worker_runtime, "current_runtime", lambda: runtime)
    finished = threading.Event()
    pool.apply_async(Trace(), args=celery_args("p1", task="chatfleet.ping"), callback=lambda ret: finished.set())
    assert finished.wait(5)
    assert runtime.attempts == {}
