"""RabbitMQ as the broker (``shared/brokers/amqp.py``), its publishing replaced by a record of
what was confirmed: the settings that choose it, the job record naming its confirmed message,
and the reaper pushing only the messages RabbitMQ never confirmed."""

import time

import fakeredis
import orjson
import pytest
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.brokers import AmqpBroker, BrokerUnavailable, RedisBroker, broker_for
from shared.jobs import JobStore
from shared.queue import run_job_message
from shared.scripts import Scripts
from shared.settings import Settings
from tests.unit.jobstores import new_job, run
from worker.queue.recovery import Recovery

URL = "amqp://chatfleet:secret@rabbitmq:5672/%2F"


class Confirmed(AmqpBroker):
    """Publishing replaced: what RabbitMQ would have confirmed, per queue; ``refuse`` makes the
    next pushes fail as a broker that is down does."""

    def __init__(self, state, down_seconds: float = 0.0):
        super().__init__(URL, state, Scripts(state, check_slots=True))
        self.DOWN_SECONDS = down_seconds
        self.confirmed: list[tuple[str, str]] = []
        self.refuse = False
        self.batches = 0

    def _publish_batch(self, batch):
        self.batches += 1
        if self.refuse:
            raise BrokerUnavailable("RabbitMQ did not take the message: refused")
        for queue, messages in batch:
            self.confirmed.extend((queue, orjson.loads(m)["headers"]["id"]) for m in messages)


def amqp_store() -> tuple[JobStore, Confirmed]:
    state = fakeredis.FakeAsyncRedis(decode_responses=True)
    broker = Confirmed(state)
    # Fair share off: every job of the one account goes straight to its queue, as these tests need.
    settings = Settings(max_deliveries=2, lease_seconds=5, check_slots=True, fair_share_queued_local=0)
    return JobStore(state, settings, broker=broker), broker


def test_the_broker_url_chooses_rabbitmq_and_leaves_redis_the_state_store():
    settings = Settings(redis_url="redis://state:6379/0", broker_url=URL)
    assert settings.broker_is_amqp and settings.broker == URL and settings.state_url == "redis://state:6379/0"
    assert isinstance(broker_for(fakeredis.FakeAsyncRedis(), None, settings), AmqpBroker)  # connects to nothing yet
    assert not Settings(redis_url="redis://one:6379/0").broker_is_amqp
    with pytest.raises(ValidationError) as refused:
        Settings(broker_url="redis+cluster://u:s3cret@a:7000,b:7001")
    assert "CHATFLEET_BROKER_URL" in str(refused.value) and "Redis Cluster" in str(refused.value)
    assert "s3cret" not in str(refused.value)  # a refused setting is never echoed: URLs carry passwords
    with pytest.raises(ValidationError) as refused:
        Settings(redis_url=12, admin_api_key="cf-admin-s3cret", job_time_limit_seconds="-1")
    assert "job_time_limit_seconds" in str(refused.value) and "-1" not in str(refused.value)


def test_a_job_names_the_message_rabbitmq_confirmed():
    async def go():
        store, broker = amqp_store()
        job_id = await new_job(store)
        assert broker.confirmed == [(keys.QUEUE_LOCAL, job_id)]
        message, pushed = await store.redis.hmget(keys.job(job_id), "message", "pushed")
        assert pushed == orjson.loads(message)["properties"]["delivery_tag"]
        assert await broker.held(keys.QUEUE_LOCAL, message)
        # A newer message of the same job (a requeue) is not held until it is confirmed.
        other = orjson.loads(message)
        other["properties"]["delivery_tag"] = "another"
        assert not await broker.held(keys.QUEUE_LOCAL, orjson.dumps(other).decode())
    run(go())


def test_a_confirmed_message_of_a_job_no_longer_recorded_writes_nothing():
    async def go():
        store, broker = amqp_store()
        job_id = await new_job(store)
        message = await store.redis.hget(keys.job(job_id), "message")
        await store.redis.delete(keys.job(job_id))  # expired meanwhile
        await broker.push(keys.QUEUE_LOCAL, message)
        assert await store.redis.exists(keys.job(job_id)) == 0
    run(go())


def test_the_reaper_pushes_only_what_rabbitmq_never_confirmed():
    async def go():
        store, broker = amqp_store()
        held = await new_job(store)
        broker.refuse = True
        await new_job(store)  # recorded and accepted: its message is left for the reaper
        broker.refuse = False
        queued = [j for s in range(keys.SHARDS) for j in await store.redis.zrange(keys.queued_jobs(s), 0, -1)]
        (stranded,) = [j for j in queued if j != held]
        assert await store.redis.hget(keys.job(stranded), "pushed") is None
        recovery = Recovery(store.redis, store.scripts, broker)
        # Much later: both look old, only the unconfirmed one is pushed.
        for shard in range(keys.SHARDS):
            for job_id in await store.redis.zrange(keys.queued_jobs(shard), 0, -1):
                await store.redis.zadd(keys.queued_jobs(shard), {job_id: time.time() - 60})
        assert await recovery.requeue_lost(older_than=10) == [stranded]
        assert broker.confirmed == [(keys.QUEUE_LOCAL, held), (keys.QUEUE_LOCAL, stranded)]
        assert await recovery.requeue_lost(older_than=10) == []  # now confirmed, it is left alone
        # Nothing to wait out on RabbitMQ: it gives a dead worker's messages back itself.
        assert await recovery.requeue_unclaimed(older_than=0) == []
    run(go())


def test_once_rabbitmq_refused_pushes_fail_at_once_for_a_moment():
    async def go():
        state = fakeredis.FakeAsyncRedis(decode_responses=True)
        broker = Confirmed(state, down_seconds=60)
        broker.refuse = True
        with pytest.raises(BrokerUnavailable):
            await broker.push(keys.QUEUE_LOCAL, b"{}")
        broker.refuse = False
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            await broker.push(keys.QUEUE_LOCAL, b"{}")
        assert broker.batches == 1  # the second push did not wait through the retries again
        broker._down_until = 0.0
        await broker.push(keys.QUEUE_LOCAL, run_job_message("job_1", keys.QUEUE_LOCAL))
        assert broker.batches == 2
    run(go())


def test_a_job_recorded_while_a_redis_broker_of_its_own_is_down_is_accepted_but_not_on_one_redis():
    class Down(RedisBroker):
        async def push(self, queue, *messages):
            raise RedisConnectionError("broker down")

    async def go():
        settings = Settings(max_deliveries=2, lease_seconds=5, check_slots=True, fair_share_queued_local=0)
        state = fakeredis.FakeAsyncRedis(decode_responses=True)
        apart = JobStore(state, settings, broker=Down(fakeredis.FakeAsyncRedis(), owns=True))
        job_id = await new_job(apart)
        assert await state.hget(keys.job(job_id), "status") == "queued"
        same = JobStore(state, settings, broker=Down(state))
        with pytest.raises(RedisConnectionError):  # the record's own Redis: the client hears of it
            await new_job(same)
    run(go())


def test_a_claim_the_state_store_cannot_answer_gives_the_message_back():
    # Acknowledged as a failed task, the message would be gone while the job's record still
    # names it as held by RabbitMQ: no sweep would ever queue the job again.
    import concurrent.futures

    from celery.exceptions import Reject

    import worker.tasks as tasks
    from shared.catalog import get_catalog
    from worker.runner import JobRunner, RunningJob, StateStoreUnavailable

    store = JobStore(fakeredis.FakeAsyncRedis(decode_responses=True), Settings(check_slots=True))

    async def claim(job_id, token):
        raise RedisConnectionError("the state store is down")

    store.claim = claim
    runner = JobRunner(store, get_catalog(), {}, Settings())
    with pytest.raises(StateStoreUnavailable):
        run(runner.run("job_1", "token", RunningJob("job_1", "token", None)))

    outcome = concurrent.futures.Future()
    outcome.set_exception(StateStoreUnavailable("could not claim job job_1"))
    original, tasks.finished_attempt = tasks.finished_attempt, lambda: outcome
    try:
        with pytest.raises(Reject) as rejected:
            tasks.run_job.run("job_1")
    finally:
        tasks.finished_attempt = original
    assert rejected.value.requeue is True
