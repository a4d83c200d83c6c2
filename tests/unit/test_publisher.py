"""The worker's publisher: the publishes of many jobs go out together, each with its own answer."""

import asyncio

import fakeredis
import pytest
from redis.exceptions import ResponseError

from shared import keys
from shared.events import read_events
from shared.jobs import TOKEN, JobStore
from shared.settings import Settings
from worker.runner import Publisher


def test_publishes_of_many_jobs_share_round_trips_and_keep_their_own_outcomes():
    async def go():
        store = JobStore(fakeredis.FakeAsyncRedis(decode_responses=True), Settings(lease_seconds=5))
        jobs = []
        for _ in range(20):
            record = await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec={"model": "m"})
            assert (await store.claim(record["id"], f"t-{record['id']}")).outcome == "claimed"
            jobs.append(record["id"])
        lost, cancelled, behind = jobs[0], jobs[1], jobs[2]
        await store.redis.set(keys.job_lease(lost), "another attempt")
        await store.redis.set(keys.job_cancel(cancelled), "1")
        await store.publish(behind, f"t-{behind}", [(1, TOKEN, "x"), (2, TOKEN, "y")])

        calls = []
        real = store.publish_many

        async def counted(batch):
            calls.append(len(batch))
            return await real(batch)

        store.publish_many = counted
        publisher = Publisher(store)

        async def tokens(job_id: str):
            out = []
            for seq in range(1, 4):
                try:
                    out.append(await publisher.publish(job_id, f"t-{job_id}", [(seq, TOKEN, f"{job_id}:{seq}")]))
                except ResponseError:
                    out.append("not growing")
            return out

        results = await asyncio.gather(*(tokens(j) for j in jobs))
        assert results[0] == [-1, -1, -1]
        assert results[1] == [1, 1, 1]
        assert results[2] == ["not growing", "not growing", 0]  # seq 3 follows the 2 already there
        assert all(r == [0, 0, 0] for r in results[3:])
        assert sum(calls) == 60 and len(calls) < 60, calls  # coalesced
        for job_id in jobs[3:]:
            assert [e.data for e in await read_events(store.redis, job_id)] == [f"{job_id}:{s}" for s in (1, 2, 3)]
        assert await read_events(store.redis, lost) == []
        assert publisher.task is None and not publisher.waiting

    asyncio.run(go())


def test_a_redis_failure_reaches_every_job_of_the_round_trip():
    async def go():
        store = JobStore(fakeredis.FakeAsyncRedis(decode_responses=True), Settings())

        async def down(batch):
            raise ConnectionError("Redis is restarting")

        store.publish_many = down
        publisher = Publisher(store)
        results = await asyncio.gather(*(publisher.publish(f"j{i}", "t", [(1, TOKEN, "x")]) for i in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        assert publisher.task is None

    asyncio.run(go())
