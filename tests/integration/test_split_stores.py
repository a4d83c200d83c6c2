"""The state store on a Redis of its own, the first one only Celery's broker: jobs, streams,
batches and usage work as on one Redis, nothing of the state lands in the broker, and a worker
killed mid-job loses nothing."""

from __future__ import annotations

import threading

import pytest
import redis

from shared import keys
from tests.integration.test_batches import line, results, wait_batch
from tests.integration.test_faults import long_job
from tests.integration.test_spine import ask, content_of, iter_sse, poll_until_done, read_sse

pytestmark = pytest.mark.integration

# What the broker may hold: Celery's queue lists, kombu's bookkeeping, Celery's own events.
BROKER_KEYS = (*keys.QUEUES, keys.UNACKED, keys.UNACKED_INDEX, keys.UNACKED_MUTEX, "_kombu.", "celery")


def assert_jobs_streams_batches_and_usage_work(stack) -> dict:
    """A sync completion, a job and its stream, a 3-line batch and the usage of all five, on
    ``stack``; returns the job."""
    with stack.client() as client:
        sync = client.post("/v4/chat-completions", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 4}))
        assert sync.status_code == 200, sync.text
        assert sync.json()["chat_completion"]["message"]["content"] == "tok0 tok1 tok2 tok3"
        job = client.post("/v4/jobs", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 5})).json()
        done = poll_until_done(client, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            events = read_sse(r)
        assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
        batch = client.post("/v4/batches", json={"requests": [line(f"c{i}") for i in range(3)]}).json()
        assert wait_batch(client, batch["id"])["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert len(results(client, batch["id"])) == 3
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()
        counted = {row["model"]: row["requests"] for row in usage["data"]}
        assert counted == {"gpt-4o-mini": 5}, usage
    return job


def test_jobs_streams_batches_and_usage_with_the_state_store_apart(own_stack):
    stack = own_stack(fake_url=own_stack.fake_url, state_redis=True)
    assert stack.state_url != stack.redis_url
    job = assert_jobs_streams_batches_and_usage_work(stack)
    broker = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    state = redis.Redis.from_url(stack.state_url, decode_responses=True)
    try:
        stray = [k for k in broker.scan_iter(count=1000) if not k.startswith(BROKER_KEYS)]
        assert stray == []
        assert state.exists(keys.job(job["id"])) and not broker.exists(keys.job(job["id"]))
        assert not any(state.exists(queue) for queue in keys.QUEUES)
    finally:
        broker.close()
        state.close()


def assert_a_worker_killed_mid_job_loses_nothing(stack) -> None:
    """A local-model job followed by a subscriber; its worker SIGKILLed after 10 events and
    another started: the job ends succeeded on its second attempt, the stream without gap or
    duplicate."""
    with stack.client() as client:
        job = client.post("/v4/jobs", json=long_job(200)).json()
        events: list[dict] = []
        seen_10 = threading.Event()

        def subscribe():
            with stack.client() as c, c.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
                for e in iter_sse(r):
                    events.append(e)
                    if len(events) == 10:
                        seen_10.set()

        follower = threading.Thread(target=subscribe)
        follower.start()
        assert seen_10.wait(30), stack.logs()
        stack.fleet.kill("worker-local")
        stack.start_worker("worker-local-2", [keys.QUEUE_LOCAL], 2)
        done = poll_until_done(client, job["id"], timeout=90)
        follower.join(30)
    assert done["status"] == "succeeded", stack.logs()
    assert done["attempts"] == 2, stack.logs()
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]


def test_a_worker_killed_mid_job_loses_nothing_with_the_state_store_apart(own_stack):
    assert_a_worker_killed_mid_job_loses_nothing(own_stack(interactive=False, state_redis=True))
