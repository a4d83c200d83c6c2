"""The state store on a Redis of its own, the first one only Celery's broker: jobs, streams,
batches and usage work as on one Redis, nothing of the state lands in the broker, and a worker
killed mid-job loses nothing."""

from __future__ import annotations

import pytest
import redis

from shared import keys
from tests.helpers import assert_a_worker_killed_mid_job_loses_nothing, assert_jobs_streams_batches_and_usage_work

pytestmark = pytest.mark.integration

# What the broker may hold: Celery's queue lists, kombu's bookkeeping, Celery's own events.
BROKER_KEYS = (*keys.QUEUES, keys.UNACKED, keys.UNACKED_INDEX, keys.UNACKED_MUTEX, "_kombu.", "celery")


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


def test_a_worker_killed_mid_job_loses_nothing_with_the_state_store_apart(own_stack):
    assert_a_worker_killed_mid_job_loses_nothing(own_stack(interactive=False, state_redis=True))
