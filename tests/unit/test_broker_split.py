"""The state store and the broker as two Redis: no script touches the broker's keys, every job
reaches its queue, and a job whose message never got there is pushed by the reaper."""

import json

import fakeredis

from shared import keys
from shared.brokers import RedisBroker
from shared.jobs import JobStore
from shared.settings import Settings
from tests.unit.jobstores import new_job, run
from worker.queue.recovery import Recovery


def split_store() -> tuple[JobStore, fakeredis.FakeAsyncRedis]:
    """A job store whose broker is a Redis of its own (two fakeredis servers)."""
    state = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    broker = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    # Fair share off: these jobs move without the admissions that hand held-back jobs out.
    settings = Settings(max_deliveries=2, lease_seconds=5, fair_share_queued=0, fair_share_queued_local=0)
    return JobStore(state, settings, broker=RedisBroker(broker)), broker


def queued_ids(raws) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in raws]


def test_messages_go_to_the_broker_and_state_stays_in_the_state_store():
    async def go():
        store, broker = split_store()
        job_id = await new_job(store)
        assert queued_ids(await broker.lrange(keys.QUEUE_LOCAL, 0, -1)) == [job_id]
        assert await store.redis.exists(keys.QUEUE_LOCAL) == 0
        assert await broker.exists(keys.job(job_id)) == 0
        # A shutting-down worker hands the job back: the new message goes to the broker too.
        await broker.delete(keys.QUEUE_LOCAL)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        assert await store.hand_back(job_id, "a")
        assert queued_ids(await broker.lrange(keys.QUEUE_LOCAL, 0, -1)) == [job_id]
    run(go())


def test_a_replayed_create_returns_the_staged_message_while_the_job_is_queued():
    """The create's reply was lost and the call made again: it changes nothing and answers the
    message still staged, for the caller to push (a duplicate at worst, which the claim turns
    into one attempt); once the job has moved on, nothing to push."""
    async def go():
        store, broker = split_store()
        job_id = await new_job(store)
        staged = (await store.get(job_id))["message"]
        replay = dict(keys=[keys.job(job_id), keys.queued_of(job_id), keys.account_jobs("acct", keys.shard_of(job_id))],
                      args=[job_id, "1", 60, "another message", "status", "queued"])
        assert await store.scripts.create_job(**replay) == staged
        assert (await store.get(job_id))["message"] == staged
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        assert await store.scripts.create_job(**replay) == ""
        assert (await store.claim(job_id, "b")).outcome == "busy"
    run(go())


def test_a_job_recorded_but_never_pushed_is_pushed_by_the_reaper_once_sure():
    """The API died between recording a job and pushing its message: the job is queued in the
    state store and its message is nowhere. The reaper finds it, and only it."""
    async def go():
        store, broker = split_store()
        pushed = await new_job(store)
        lost = await new_job(store)
        held = await new_job(store)
        raws = {job_id: raw for job_id, raw in zip(queued_ids(await broker.lrange(keys.QUEUE_LOCAL, 0, -1)),
                                                   await broker.lrange(keys.QUEUE_LOCAL, 0, -1))}
        await broker.lrem(keys.QUEUE_LOCAL, 0, raws[lost])  # as if never pushed
        await broker.lrem(keys.QUEUE_LOCAL, 0, raws[held])  # a worker holds it, unacknowledged
        tag = json.loads(raws[held])["properties"]["delivery_tag"]
        await broker.hset(keys.UNACKED, tag, json.dumps([json.loads(raws[held]), "", keys.QUEUE_LOCAL]))

        recovery = Recovery(store.redis, store.scripts, store.broker)
        assert await recovery.requeue_lost(older_than=3600) == []  # not old enough to be sure
        assert await recovery.requeue_lost(older_than=0) == [lost]
        assert sorted(queued_ids(await broker.lrange(keys.QUEUE_LOCAL, 0, -1))) == sorted([pushed, lost])
        assert await recovery.requeue_lost(older_than=0) == []  # its new message is on the queue
        assert await store.redis.exists(keys.UNACKED) == 0
    run(go())


def test_a_lapsed_job_goes_back_to_the_brokers_queue():
    async def go():
        store, broker = split_store()
        job_id = await new_job(store)
        await broker.delete(keys.QUEUE_LOCAL)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        await store.redis.delete(keys.job_lease(job_id))
        recovery = Recovery(store.redis, store.scripts, store.broker)
        assert await recovery.requeue_lapsed(job_id)
        assert queued_ids(await broker.lrange(keys.QUEUE_LOCAL, 0, -1)) == [job_id]
        assert (await store.get(job_id))["status"] == "queued"
    run(go())


def test_a_requeue_made_again_after_its_reply_was_lost_still_gets_its_message_pushed():
    """The reaper's and the scheduler's requeues, made again with the same arguments (the first
    run's reply lost): the same answer, so that their caller pushes the staged message rather
    than leave the job waiting for the reaper's lost-message sweep."""
    async def go():
        store, broker = split_store()
        job_id = await new_job(store)
        await broker.delete(keys.QUEUE_LOCAL)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        await store.redis.delete(keys.job_lease(job_id))
        lapsed = dict(keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.queued_of(job_id)],
                      args=[job_id, "1000.5", "m1"])
        assert await store.scripts.requeue_lapsed(**lapsed) == 1
        assert await store.scripts.requeue_lapsed(**lapsed) == 1
        assert await store.scripts.requeue_lapsed(**dict(lapsed, args=[job_id, "1001.5", "m2"])) == 0
        assert (await store.get(job_id))["message"] == "m1"

        await store.redis.hset(keys.job(job_id), mapping={"status": "throttled", "updated_at": "1"})
        waiting = dict(keys=[keys.job(job_id), keys.queued_of(job_id)], args=[job_id, "1002.5", "m3"])
        assert await store.scripts.requeue_waiting(**waiting) == "requeued"
        assert await store.scripts.requeue_waiting(**waiting) == "requeued"
        assert await store.scripts.requeue_waiting(**dict(waiting, args=[job_id, "1003.5", "m4"])) == "busy"

        lost = dict(keys=[keys.job(job_id), keys.queued_of(job_id)], args=[job_id, "1004.5", "m5", "1e12", "m3"])
        assert await store.scripts.requeue_lost(**lost) == "requeued"
        assert await store.scripts.requeue_lost(**lost) == "requeued"
        assert (await store.get(job_id))["message"] == "m5"
    run(go())
