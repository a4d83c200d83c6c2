"""Lifecycle: several API instances and workers on one Redis, graceful shutdown of each."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from celery import Celery

from deploy.devstack import ROOT, api_argv, flower_argv, free_port, wait_ready
from shared import keys
from shared.connections import sync_redis
from tests.conftest import DEV_KEY
from tests.helpers import content_of, iter_sse, poll_until_done, wait_for

pytestmark = pytest.mark.integration

SLOW = {"model": "gpt-4o-mini", "messages": [{"content": "tell me more"}], "model_parameters": {"max_tokens": 40}}


def second_api(stack) -> str:
    port = free_port()
    stack.fleet.spawn("api-2", api_argv("127.0.0.1", port), stack.env, stack.log_dir)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, [keys.QUEUE_INTERACTIVE], fleet=stack.fleet)
    return base


def test_two_apis_two_workers_and_an_api_restart_mid_stream(own_stack):
    stack = own_stack(fake_url=own_stack.fake_url)
    stack.start_worker("worker-interactive-b", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], 50)
    other = second_api(stack)
    own_stack.fake.config(tokens_per_s=10)
    with stack.client() as a, httpx.Client(base_url=other, headers={"x-api-key": DEV_KEY}, timeout=60) as b:
        job = a.post("/v4/jobs", json=SLOW).json()
        assert b.get(f"/v4/jobs/{job['id']}").status_code == 200  # one Redis, no other coordination
        events, reconnect = [], None
        with a.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            for e in iter_sse(r):
                if e["event"] == "reconnect":
                    reconnect = json.loads(e["data"])
                    break
                events.append(e)
                if len(events) == 5:
                    stack.fleet.procs["api"].send_signal(signal.SIGTERM)
        assert reconnect is not None, events
        assert reconnect["last_event_id"] == int(events[-1]["id"])
        stopped = stack.fleet.procs["api"].wait(60)
        assert stopped is not None
        with b.stream("GET", f"/v4/jobs/{job['id']}/stream", headers={"Last-Event-ID": events[-1]["id"]}) as r:
            events += list(iter_sse(r))
        done = poll_until_done(b, job["id"])
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
    assert events[-1]["event"] == "end"


def test_sigterm_lets_short_jobs_finish_and_hands_long_ones_to_another_worker(own_stack):
    stack = own_stack(fake_url=own_stack.fake_url, CHATFLEET_SHUTDOWN_GRACE_SECONDS="2")
    fake = own_stack.fake
    fake.config(tokens_per_s=8, tokens=40)
    with stack.client() as client:
        short = client.post("/v4/jobs", json={**SLOW, "model_parameters": {"max_tokens": 8}}).json()  # ~1 s
        long = client.post("/v4/jobs", json=SLOW).json()  # ~5 s: longer than the grace period
        wait_for(lambda: all(client.get(f"/v4/jobs/{j['id']}").json()["status"] == "running" for j in (short, long)),
                 what="both jobs to run")
        events: list[dict] = []

        def follow():
            with stack.client() as c, c.stream("GET", f"/v4/jobs/{long['id']}/stream") as r:
                events.extend(iter_sse(r))

        follower = threading.Thread(target=follow)
        follower.start()
        worker = stack.fleet.procs["worker-interactive"]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0  # it exits by itself once its jobs are done or handed back
        stack.start_worker("worker-interactive-2", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], 50)
        first, second = poll_until_done(client, short["id"]), poll_until_done(client, long["id"], 120)
        follower.join(60)
        assert not follower.is_alive()
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()["data"]
    assert first["status"] == second["status"] == "succeeded"
    assert first["result"]["chat_completion"]["message"]["content"].count("tok") == 8
    text = second["result"]["chat_completion"]["message"]["content"]
    assert text == " ".join(f"tok{i}" for i in range(40))  # the whole reply, each token once
    assert content_of(events) == text
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    long_calls = [r for r in fake.requests() if r["body"].get("max_tokens") == 40]
    assert len(long_calls) == 2  # handed back once, continued once
    (row,) = usage
    assert row["requests"] == 2  # each job billed once


def test_flower_refuses_to_start_without_credentials_and_checks_them(stack):
    env = {k: v for k, v in stack.env.items() if k not in ("CHATFLEET_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH")}
    refused = subprocess.run(flower_argv(free_port()), env=env, capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
    assert refused.returncode != 0
    assert "CHATFLEET_FLOWER_BASIC_AUTH" in refused.stderr

    port = free_port()
    stack.fleet.spawn("flower", flower_argv(port), {**env, "CHATFLEET_FLOWER_BASIC_AUTH": "ops:s3cret"}, stack.log_dir)
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: _answers(url), 60, 0.2, "flower")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=("ops", "wrong")).status_code == 401
    assert httpx.get(url, auth=("ops", "s3cret")).status_code == 200

    # Workers send task events only once a monitor asks; Flower does, so it sees the jobs.
    submitted: list[str] = []

    def flower_lists_a_job() -> bool:
        r = httpx.post(f"{stack.base_url}/v4/jobs", headers={"x-api-key": DEV_KEY},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        submitted.append(r.json()["id"])
        tasks = httpx.get(f"{url}api/tasks", auth=("ops", "s3cret"), timeout=5).json()
        return any(job_id in tasks for job_id in submitted)

    wait_for(flower_lists_a_job, 60, 0.5, "a job in Flower's task list")
    stack.fleet.stop("flower")


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_readyz_reports_each_dependency(stack):
    body = httpx.get(f"{stack.base_url}/readyz").json()
    assert body["redis"] == "ok"
    assert set(body["workers"]) >= {keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH, keys.QUEUE_LOCAL}
    assert body["providers"]["openai"] is True and body["providers"]["local"] is True


def test_a_worker_runs_its_jobs_on_its_loop_and_acks_each_once_it_ended(own_stack):
    # worker/queue/pool.py: no pool thread per job; Celery still sees each job active from its start,
    # acknowledges its message only when it has ended, and logs the job's run time.
    s = own_stack(fake_url=own_stack.fake_url)
    own_stack.fake.config(tokens_per_s=2, tokens=40)  # ~20 s per job: all 30 run at once
    redis = sync_redis(s.redis_url)
    control = Celery(broker=s.redis_url)
    pid = s.fleet.procs["worker-interactive"].pid

    def threads() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))

    try:
        with s.client() as client:
            ids = [client.post("/v4/jobs", json=SLOW).json()["id"] for _ in range(30)]
            wait_for(lambda: all(client.get(f"/v4/jobs/{i}").json()["status"] == "running" for i in ids),
                     interval=0.1, what="all 30 jobs to run")
            # Celery's threads pool would hold a thread per running job here.
            assert threads() < 10, threads()
            # Every message taken off its list and held by the worker, in memory (no ack emulation).
            assert redis.llen(keys.QUEUE_INTERACTIVE) == 0 and redis.hlen(keys.UNACKED) == 0
            active = control.control.inspect(destination=[f"worker-interactive@{socket.gethostname()}"],
                                             timeout=30).active()
            assert {task["id"] for tasks in active.values() for task in tasks} == set(ids)
            results = [poll_until_done(client, i, 120) for i in ids]
        wait_for(lambda: not any(control.control.inspect(
            destination=[f"worker-interactive@{socket.gethostname()}"], timeout=30).active().values()),
            what="every job's task ended")
    finally:
        control.close()
        redis.close()
    assert {r["status"] for r in results} == {"succeeded"}
    assert len([r for r in own_stack.fake.requests() if r["body"].get("max_tokens") == 40]) == 30  # one call each
    log = s.fleet.logs["worker-interactive"].read_text()
    runtimes = [float(m) for i in ids for m in re.findall(rf"{i}\]? succeeded in ([0-9.]+)s", log)]
    assert len(runtimes) == 30 and min(runtimes) > 5, runtimes  # each job's own run time, logged once
