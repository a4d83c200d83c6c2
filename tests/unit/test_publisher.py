"""The worker's publisher: the publishes of many jobs go out together, each with its own answer."""

import asyncio

import fakeredis
import pytest
from redis.exceptions import ResponseError

from shared import keys
from shared.events import TOKEN, read_events
from shared.jobs import JobStore
from shared.settings import Settings
from tests.unit.jobstores import SPEC
from worker.publishing import Publisher


def test_publishes_of_many_jobs_share_round_trips_and_keep_their_own_outcomes():
    async def go():
        store = JobStore(fakeredis.FakeAsyncRedis(decode_responses=True), Settings(lease_seconds=5))
        jobs = []
        for _ in range(20):
            record = await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec=SPEC)
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


def test_an_attempt_cancelled_while_draining_still_waits_for_the_publish_in_flight():
    """The time limit or a cancel can interrupt ``drain``; the attempt's last events are numbered
    after what the publish in flight writes, so ``close`` must wait for it to land."""
    from worker.attempt import Attempt
    from worker.publishing import Emitter

    class SlowPublisher:
        """Each publish lands only once ``landing`` is set."""

        def __init__(self):
            self.seqs: list[int] = []
            self.in_flight, self.landing = asyncio.Event(), asyncio.Event()

        async def publish(self, job_id, token, events):
            self.in_flight.set()
            await self.landing.wait()
            self.seqs += [seq for seq, _, _ in events]
            return 0

    async def go():
        publisher = SlowPublisher()
        attempt = Attempt("job", "token", 0)
        emitter = Emitter(publisher, attempt)

        emitted = []

        async def emit_many():
            for i in range(2 * Emitter.MAX_PENDING):  # a full queue makes emit wait in drain()
                emitted.append(f"t{i} ")
                await emitter.emit(emitted[-1])

        task = asyncio.create_task(emit_many())
        await publisher.in_flight.wait()  # emit_many, its queue full, waits in drain() for it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closing = asyncio.ensure_future(emitter.close())
        await asyncio.sleep(0)
        assert not closing.done()  # close waits for the publish in flight
        publisher.landing.set()
        leftover = await closing
        assert attempt.seq == len(publisher.seqs) == len(attempt.delivered)
        assert publisher.seqs == list(range(1, attempt.seq + 1))
        assert attempt.delivered + leftover == emitted  # nothing lost or repeated

    asyncio.run(go())


def test_a_round_trip_is_bounded_in_jobs_and_events():
    async def go():
        store = JobStore(fakeredis.FakeAsyncRedis(decode_responses=True), Settings())
        sizes = []

        async def record(batch):
            sizes.append((len(batch), sum(len(events) for _, _, events in batch)))
            return [0] * len(batch)

        store.publish_many = record
        publisher = Publisher(store)
        big = [(seq, TOKEN, "x") for seq in range(1, 201)]
        await asyncio.gather(*(publisher.publish(f"j{i}", "t", big) for i in range(25)),
                             *(publisher.publish(f"k{i}", "t", big[:1]) for i in range(600)))
        assert sum(n for n, _ in sizes) == 625
        assert all(n <= Publisher.MAX_JOBS and events <= Publisher.MAX_EVENTS for n, events in sizes), sizes

    asyncio.run(go())
