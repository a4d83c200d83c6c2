"""Faults: a worker killed mid-job, a job that keeps killing its workers, Redis restarted."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from deploy.devstack import start_redis
from shared import keys
from tests.helpers import (
    LONG_JOB_DEADLINE,
    content_of,
    iter_sse,
    log_lines,
    long_job,
    poll_until_done,
    read_sse,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_killed_worker_job_resumes_elsewhere_without_gap_or_duplicate(own_stack):
    stack = own_stack(interactive=False)
    with stack.client() as client:
        job = client.post("/v4/jobs", json=long_job(400)).json()
        events: list[dict] = []
        seen_20 = threading.Event()

        def subscribe():  # one subscriber connected through the whole fault
            with stack.client() as c, c.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
                for e in iter_sse(r):
                    events.append(e)
                    if len(events) == 20:
                        seen_20.set()

        follower = threading.Thread(target=subscribe)
        follower.start()
        assert seen_20.wait(60)
        stack.fleet.kill("worker-local")  # SIGKILL: no chance to clean up
        assert client.get(f"/v4/jobs/{job['id']}").json()["status"] == "running"
        stack.start_worker("worker-local-2", [keys.QUEUE_LOCAL], 2)
        done = poll_until_done(client, job["id"], timeout=LONG_JOB_DEADLINE)
        follower.join(60)

    assert not follower.is_alive()
    assert done["status"] == "succeeded", stack.logs()
    assert done["attempts"] == 2
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no duplicate
    text = done["result"]["chat_completion"]["message"]["content"]
    assert content_of(events) == text
    # The second attempt continued after what was delivered: ~400 tokens in all, not 400 + 20.
    usage = done["result"]["token_usage"]
    assert 390 <= usage["completion"] <= 410, usage
    assert events[-1]["event"] == "end"


def test_job_that_keeps_losing_its_worker_is_failed_not_looped(own_stack):
    stack = own_stack(interactive=False, CHATFLEET_MAX_DELIVERIES="1")
    with stack.client() as client:
        job = client.post("/v4/jobs", json=long_job(3000)).json()
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            read_sse(r, limit=3)
        stack.fleet.kill("worker-local")
        stack.start_worker("worker-local-2", [keys.QUEUE_LOCAL], 2)
        done = poll_until_done(client, job["id"], timeout=60)
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            events = read_sse(r)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "redelivery_limit"
    assert done["attempts"] == 1
    # Billed what was sent: the prompt went upstream once (its one admitted attempt).
    assert done["usage"]["prompt_tokens"] > 0 and done["usage"]["estimated"]
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["code"] == "redelivery_limit"


def test_redis_restart_loses_no_job(own_stack, tmp_path):
    """Redis with AOF restarts while jobs are queued and running: all of them finish, and a
    subscriber connected through the restart gets every event of its job, in order."""
    stack = own_stack(interactive=False)
    with stack.client() as client:
        ids = [client.post("/v4/jobs", json=long_job(60)).json()["id"] for _ in range(6)]
        running = wait_for(lambda: next((i for i in ids if client.get(f"/v4/jobs/{i}").json()["status"] == "running"),
                                        None), what="a job to run")
    events: list[dict] = []
    failure: list[BaseException] = []

    def subscribe():
        try:
            with stack.client() as c, c.stream("GET", f"/v4/jobs/{running}/stream") as r:
                for event in iter_sse(r):
                    events.append(event)
        except BaseException as exc:  # reported below: the stream must not break
            failure.append(exc)

    follower = threading.Thread(target=subscribe)
    follower.start()
    wait_for(lambda: len(events) >= 2, what="the subscriber to receive tokens")
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_proc = stack.fleet.procs["redis"]
    data_dir = next(a for a in redis_proc.args if a.endswith("redis"))
    os.kill(redis_proc.pid, signal.SIGTERM)  # a clean restart: AOF is flushed on shutdown
    redis_proc.wait(10)
    del stack.fleet.procs["redis"]
    with stack.client() as client:
        down = client.post("/v4/jobs", json=long_job(5))
    assert down.status_code == 503 and down.headers["retry-after"] == "1", down.text
    assert down.json() == {"detail": "the job store is unavailable; retry shortly"}
    start_redis(stack.fleet, port, __import__("pathlib").Path(data_dir), stack.log_dir, name="redis-2")

    with stack.client() as client:
        def all_done():
            try:
                jobs = [client.get(f"/v4/jobs/{i}").json() for i in ids]
            except httpx.HTTPError:
                return None
            return jobs if all(j.get("status") in ("succeeded", "failed", "cancelled") for j in jobs) else None
        jobs = wait_for(all_done, LONG_JOB_DEADLINE, 0.5, "every job to finish after the restart")
    assert [j["status"] for j in jobs] == ["succeeded"] * 6, (jobs, stack.logs())
    for j in jobs:
        assert j["result"]["token_usage"]["completion"] >= 55
    follower.join(60)
    assert not follower.is_alive() and not failure, failure
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert events[-1]["event"] == "end"
    done = next(j for j in jobs if j["id"] == running)
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
    with stack.client() as client:  # and the API records and queues new jobs again
        again = client.post("/v4/jobs", json=long_job(5))
        assert again.status_code == 202, again.text
        job = poll_until_done(client, again.json()["id"])
    assert job["status"] == "succeeded" and job["result"]["token_usage"]["completion"] == 5, job


def test_workers_outlive_a_redis_killed_under_them(own_stack):
    """Redis SIGKILLed under running jobs and back 2 s later: every worker is still there (kombu's
    channel, closing a connection Redis dropped, used to fail in a way Celery stops a worker on)
    once it has taken a job from the Redis that came back, and the jobs, those running then and
    those sent after, finish."""
    stack = own_stack(fake_url=own_stack.fake_url)
    own_stack.fake.config(tokens_per_s=20, tokens=1000)
    body = {"model": "gpt-4o-mini", "messages": [{"content": "x"}], "model_parameters": {"max_tokens": 40}}
    with stack.client() as client:
        ids = [client.post("/v4/jobs", json=body).json()["id"] for _ in range(6)]
        wait_for(lambda: all(client.get(f"/v4/jobs/{i}").json()["status"] == "running" for i in ids),
                 what="the jobs to run")
    redis_proc = stack.fleet.procs["redis"]
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    data_dir = next(a for a in redis_proc.args if a.endswith("redis"))
    before = {name: len(log_lines(stack, name)) for name in ("worker-interactive", "worker-local")}
    stack.fleet.kill("redis")
    time.sleep(2)  # the outage
    during = {name: log_lines(stack, name)[before[name]:] for name in before}
    start_redis(stack.fleet, port, Path(data_dir), stack.log_dir, name="redis-2")
    with stack.client() as client:
        # One job sent after for each worker: taking it from the Redis that came back puts the
        # worker's reconnect, where it used to stop, behind it.
        ids.append(client.post("/v4/jobs", json=body).json()["id"])
        ids.append(client.post("/v4/jobs", json=long_job(2)).json()["id"])
        jobs = [poll_until_done(client, i, timeout=120) for i in ids]
    for name in ("worker-interactive", "worker-local"):
        assert stack.fleet.procs[name].poll() is None, (name, stack.logs())
    assert [j["status"] for j in jobs] == ["succeeded"] * 8, jobs
    # The outage is logged once per service and job, not once per pass (ten a second, each).
    for name, lines in during.items():
        assert len(lines) <= 30, (name, len(lines), "\n".join(lines[-40:]))
