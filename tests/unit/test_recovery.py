"""The reaper's sweeps (worker/queue/recovery.py), against the Lua scripts themselves."""

import json
import time

import pytest

from shared import keys
from shared.queue import stored_job_id
from tests.unit.jobstores import new_job, run
from worker.queue.recovery import Recovery


@pytest.fixture
def recovery(store):
    return Recovery(store.redis, store.scripts)


def test_lapsed_lease_is_requeued_once(store, recovery):
    async def go():
        job_id = await new_job(store)
        await store.redis.delete(keys.QUEUE_LOCAL)
        await store.claim(job_id, "a")
        assert not await recovery.requeue_lapsed(job_id)  # lease still held
        await store.redis.delete(keys.job_lease(job_id))
        assert job_id in await recovery.lapsed_jobs(now=10**12)
        assert await recovery.requeue_lapsed(job_id)
        assert not await recovery.requeue_lapsed(job_id)
        assert (await store.get(job_id))["status"] == "queued"
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 1
    run(go())


def test_a_message_lost_between_the_queue_and_a_worker_is_replaced_once_sure(store, recovery):
    """kombu takes a message off the queue before recording it as unacknowledged: a worker
    killed in between loses it. The reaper gives such a job a new message, and only then."""
    async def go():
        on_queue = await new_job(store)
        assert await recovery.requeue_lost(older_than=0) == []  # its message is on the queue
        held = await new_job(store)
        lost = await new_job(store)
        claimed = await new_job(store)
        # Three messages taken off the queue (oldest first, like BRPOP): one a worker recorded
        # as unacknowledged, one that vanished with its worker, one that was started.
        raws = [await store.redis.rpop(keys.QUEUE_LOCAL) for _ in range(4)]
        by_job = {json.loads(raw)["headers"]["id"]: raw for raw in raws}
        await store.redis.lpush(keys.QUEUE_LOCAL, by_job[on_queue])
        tag = json.loads(by_job[held])["properties"]["delivery_tag"]
        await store.redis.hset(keys.UNACKED, tag, json.dumps([json.loads(by_job[held]), "", keys.QUEUE_LOCAL]))
        assert (await store.claim(claimed, "w")).outcome == "claimed"
        assert "message" not in await store.get(claimed)

        assert await recovery.requeue_lost(older_than=3600) == []  # not old enough to be sure
        assert await recovery.requeue_lost(older_than=0) == [lost]
        queue = [json.loads(m)["headers"]["id"] for m in await store.redis.lrange(keys.QUEUE_LOCAL, 0, -1)]
        assert sorted(queue) == sorted([on_queue, lost])
        assert (await store.get(lost))["status"] == "queued"
        assert await recovery.requeue_lost(older_than=0) == []  # its new message is on the queue
        assert await store.redis.zscore(keys.queued_of(claimed), claimed) is None
    run(go())


def test_a_message_held_by_a_dead_worker_is_queued_again_once(store, recovery):
    """A worker took the message and died before starting the job: kombu holds the message
    unacknowledged until the visibility timeout. Once it is old enough, the reaper queues the
    job again and drops the stale entry, once, and never a job that has moved on."""
    async def go():
        stranded = await new_job(store)
        started = await new_job(store)
        raws = [await store.redis.rpop(keys.QUEUE_LOCAL) for _ in range(2)]
        old = time.time() - 100
        for raw in raws:
            tag = json.loads(raw)["properties"]["delivery_tag"]
            await store.redis.hset(keys.UNACKED, tag, json.dumps([json.loads(raw), "", keys.QUEUE_LOCAL]))
            await store.redis.zadd(keys.UNACKED_INDEX, {tag: old})
            await store.redis.hset(keys.job(stored_job_id(await store.redis.hget(keys.UNACKED, tag))),
                                   "updated_at", repr(old))
        assert (await store.claim(started, "w")).outcome == "claimed"

        assert await recovery.requeue_unclaimed(older_than=3600) == []  # not old enough to be sure
        assert await recovery.requeue_unclaimed(older_than=10) == [stranded]
        queued = [json.loads(m)["headers"]["id"] for m in await store.redis.lrange(keys.QUEUE_LOCAL, 0, -1)]
        assert queued == [stranded]
        held = [stored_job_id(m) for m in (await store.redis.hgetall(keys.UNACKED)).values()]
        assert held == [started]  # the running job's message stays held by its worker
        assert await store.redis.zcard(keys.UNACKED_INDEX) == 1
        assert await recovery.requeue_unclaimed(older_than=10) == []  # once
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 1
    run(go())


def test_stale_entries_an_earlier_worker_left_are_swept(store, recovery):
    """No worker of this version sweeps kombu's unacked hash (no ack emulation): the reaper
    drops the entries of jobs gone or ended, and of running ones past the visibility timeout,
    so that they do not stay among the oldest it reads each pass."""
    async def go():
        ended, gone, running, young = [await new_job(store) for _ in range(4)]
        raws = [await store.redis.rpop(keys.QUEUE_LOCAL) for _ in range(4)]
        by_job = {stored_job_id(f"[{raw}]"): raw for raw in raws}
        now = time.time()
        for job_id, held_since in ((ended, now - 100), (gone, now - 100), (running, now - 7200), (young, now - 100)):
            raw = by_job[job_id]
            tag = json.loads(raw)["properties"]["delivery_tag"]
            await store.redis.hset(keys.UNACKED, tag, json.dumps([json.loads(raw), "", keys.QUEUE_LOCAL]))
            await store.redis.zadd(keys.UNACKED_INDEX, {tag: held_since})
        await store.redis.hset(keys.job(ended), "status", "succeeded")
        await store.redis.delete(keys.job(gone))
        for job_id in (running, young):
            assert (await store.claim(job_id, "w")).outcome == "claimed"
        assert await recovery.requeue_unclaimed(older_than=10, visibility_timeout=3600) == []
        held = [stored_job_id(m) for m in (await store.redis.hgetall(keys.UNACKED)).values()]
        assert held == [young]  # a running job's entry stays while its worker may still ack it
        assert await store.redis.zcard(keys.UNACKED_INDEX) == 1
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 0  # nothing queued again
    run(go())


def test_requeue_unclaimed_made_again_changes_nothing(store, recovery):
    async def go():
        job_id = await new_job(store)
        raw = await store.redis.rpop(keys.QUEUE_LOCAL)
        tag = json.loads(raw)["properties"]["delivery_tag"]
        await store.redis.hset(keys.UNACKED, tag, json.dumps([json.loads(raw), "", keys.QUEUE_LOCAL]))
        await store.redis.hset(keys.job(job_id), "updated_at", repr(time.time() - 100))
        call = dict(keys=[keys.job(job_id), keys.queued_of(job_id)],
                    args=[job_id, repr(time.time()), raw, repr(time.time() - 10)])
        assert await store.scripts.requeue_unclaimed(**call) == 1
        staged = await store.get(job_id)
        # Its reply lost, made again: the same answer (for its caller to push), nothing changed.
        assert await store.scripts.requeue_unclaimed(**call) == 1
        assert await store.get(job_id) == staged and staged["message"] == raw
        # Not a replay (another time): the job, requeued since the cutoff, is left alone.
        later = dict(call, args=[job_id, repr(time.time() + 1), raw, repr(time.time() - 10)])
        assert await store.scripts.requeue_unclaimed(**later) == 0
    run(go())
