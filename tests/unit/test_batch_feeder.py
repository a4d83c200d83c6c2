"""The batch feeder's hand-over of staged lines to the queue (worker/services/batch_feeder.py)."""

import time

import orjson

from shared import keys
from shared.jobspec import StagedLine
from shared.queue import stored_job_id
from shared.settings import Settings
from tests.unit.jobstores import run
from worker.services.batch_feeder import BatchFeeder, within_local_budget


def staged(custom_id: str, queue: str = keys.QUEUE_BATCH) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "model": "m", "queue": queue,
                         "spec": {"model": "m", "messages": [{"role": "user", "content": custom_id}]}})


def test_staged_lines_become_queued_jobs_in_one_step_and_a_replay_changes_nothing(store, monkeypatch):
    async def go():
        redis = store.redis
        await redis.rpush(keys.batch_pending("b1"), staged("one"), staged("two"), staged("three"))
        feeder = BatchFeeder(store, Settings())
        calls = []
        script = store.scripts.feed_batch

        async def recorded(keys=(), args=()):
            calls.append((list(keys), list(args)))
            return await script(keys=keys, args=args)

        monkeypatch.setattr(store.scripts, "feed_batch", recorded, raising=False)
        entries = await redis.lrange(keys.batch_pending("b1"), 0, 1)
        ids = await feeder.feed("b1", "acct", [StagedLine.load(e) for e in entries])

        assert await redis.lrange(keys.batch_pending("b1"), 0, -1) == [staged("three").decode()]
        assert await redis.smembers(keys.batch_jobs("b1")) == set(ids)
        assert await redis.get(keys.batch_in_flight(keys.shard_of("b1"))) == "2"
        queued = [stored_job_id(orjson.dumps([orjson.loads(m)])) for m in await redis.lrange(keys.QUEUE_BATCH, 0, -1)]
        assert sorted(queued) == sorted(ids)
        for job_id, custom_id in zip(ids, ("one", "two")):
            job = await store.get(job_id)
            assert (job["status"], job["batch_id"], job["custom_id"], job["account_id"]) == \
                ("queued", "b1", custom_id, "acct")
            assert orjson.loads(job["spec"])["messages"][0]["content"] == custom_id
            assert await redis.zscore(keys.queued_of(job_id), job_id) is not None
            assert 0 < await redis.ttl(keys.job(job_id)) <= Settings().job_retention_seconds

        # The same call made again (its reply lost): the first run's answer (its caller pushes the
        # messages: twice at worst), no line trimmed, no job recorded twice.
        (job_keys, args), = calls
        assert await script(keys=job_keys, args=args) == 2
        assert await redis.llen(keys.batch_pending("b1")) == 1
        assert await redis.llen(keys.QUEUE_BATCH) == 2
        assert await redis.get(keys.batch_in_flight(keys.shard_of("b1"))) == "2"
    run(go())


def test_the_local_models_lines_are_handed_out_in_order_within_their_budget():
    lines = [StagedLine.load(staged(c, q)) for c, q in
             [("a", keys.QUEUE_BATCH), ("b", keys.QUEUE_LOCAL), ("c", keys.QUEUE_BATCH), ("d", keys.QUEUE_LOCAL),
              ("e", keys.QUEUE_BATCH)]]
    assert [line.custom_id for line in within_local_budget(lines, 0)] == ["a"]
    assert [line.custom_id for line in within_local_budget(lines, 1)] == ["a", "b", "c"]
    assert [line.custom_id for line in within_local_budget(lines, 2)] == ["a", "b", "c", "d", "e"]


def test_local_lines_in_flight_stay_below_the_fleets_local_slots(store):
    """Two workers announce 3 local slots in all; one is kept for interactive work: a batch of
    the local model gets two lines in flight, and one more as each finishes."""
    async def go():
        redis = store.redis
        settings = Settings()
        now = time.time()
        for host, slots in (("w1", 2), ("w2", 1), ("w3", 0)):
            await redis.zadd(keys.WORKERS, {host: now})
            await redis.hset(keys.worker(host), mapping={"local_slots": slots})
        await redis.zadd(keys.WORKERS, {"gone": now - 3600})  # no longer beating: not counted
        await redis.hset(keys.worker("gone"), mapping={"local_slots": 8})
        batch_id = "batch_" + "0" * 22 + "07"
        shard = keys.shard_of(batch_id)
        await redis.hset(keys.batch(batch_id), mapping={"id": batch_id, "account_id": "acct", "status": "in_progress"})
        await redis.zadd(keys.active_batches(shard), {batch_id: now})
        await redis.rpush(keys.batch_pending(batch_id), *(staged(f"l{i}", keys.QUEUE_LOCAL) for i in range(10)))
        feeder = BatchFeeder(store, settings)
        await feeder.run_pass()
        await feeder.run_pass()  # nothing more: the budget is spent
        assert await redis.llen(keys.QUEUE_LOCAL) == 2
        assert await redis.get(keys.batch_local_in_flight(shard)) == "2"
        assert await redis.llen(keys.batch_pending(batch_id)) == 8
        await redis.decr(keys.batch_local_in_flight(shard))  # one finishes (finish_job.lua does this)
        await feeder.run_pass()
        assert await redis.llen(keys.QUEUE_LOCAL) == 3 and await redis.llen(keys.batch_pending(batch_id)) == 7
    run(go())
