"""The batch feeder's hand-over of staged lines to the queue (worker/services/batch_feeder.py)."""

import orjson

from shared import keys
from shared.queue import stored_job_id
from shared.settings import Settings
from tests.unit.jobstores import run
from worker.services.batch_feeder import BatchFeeder


def staged(custom_id: str) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "model": "m", "queue": keys.QUEUE_BATCH,
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
        ids = await feeder.feed("b1", "acct", entries)

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
