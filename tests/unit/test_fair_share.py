"""Fair share on a queue: an account has at most a few jobs on the broker's list at a time, the
rest held back in its own line and handed out, in its priority order, as its queued ones are
taken (against the scripts themselves: fakeredis runs them)."""

import time

from shared import keys
from shared.jobs import JobStore
from tests.unit.jobstores import SPEC, fake_store, run
from worker.limits import Limiter
from worker.services.sweeper import AccountsSweeper

QUEUE = keys.QUEUE_INTERACTIVE
COMMON = dict(model="m", deployment="d", deployment_rpm=None, deployment_tpm=None, tokens=10)


def store_with(places: int) -> JobStore:
    store = fake_store(fair_share=True)
    store.settings = store.settings.model_copy(update={"fair_share_queued": places})
    return store


async def submit(store: JobStore, account: str, priority: str = "default") -> str:
    record = await store.create(account_id=account, model="m", queue=QUEUE, spec=SPEC, priority=priority)
    return record["id"]


async def on_queue(store: JobStore) -> list[str]:
    """The job ids on the broker's list, oldest first."""
    from shared.queue import stored_job_id
    raws = await store.redis.lrange(QUEUE, 0, -1)
    return [stored_job_id(f"[{raw}]") for raw in reversed(raws)]


def test_an_accounts_backlog_waits_in_its_own_line_and_another_account_goes_ahead():
    async def go():
        store = store_with(2)
        limiter = Limiter(store.redis, store.settings)
        a = [await submit(store, "a") for _ in range(6)]
        assert await on_queue(store) == a[:2]  # the rest held back
        assert [await store.redis.hget(keys.job(j), "held") for j in a] == [None, None] + ["1"] * 4
        b = [await submit(store, "b") for _ in range(2)]
        assert await on_queue(store) == a[:2] + b  # b's go straight behind a's two, not its four more
        # A worker takes a's first job: its place goes to a's next, queued after b's.
        admission = await limiter.admit(job_id=a[0], account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
        assert admission.released == [a[2]]
        assert await store.release(QUEUE, admission.released) == 1
        assert await store.release(QUEUE, admission.released) == 0  # released once, however often asked
        assert await on_queue(store) == [*a[:2], *b, a[2]]
        assert await store.redis.hget(keys.job(a[2]), "held") is None
    run(go())


def test_a_job_handed_out_before_its_record_was_written_goes_to_its_queue_at_once():
    async def go():
        store = store_with(1)
        limiter = Limiter(store.redis, store.settings)
        first = await submit(store, "a")
        create_job = store.scripts.create_job
        handed_out = []

        async def admitted_meanwhile(**kwargs):
            # A worker admits the account's queued job between fair_enter and the record: its
            # hand-out names the job being submitted, which it cannot release yet.
            admission = await limiter.admit(job_id=first, account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
            handed_out.extend(admission.released)
            assert await store.release(QUEUE, admission.released) == 0  # no record yet
            return await create_job(**kwargs)

        store.scripts.create_job = admitted_meanwhile
        second = await submit(store, "a")
        assert handed_out == [second]
        assert await on_queue(store) == [first, second]  # on its queue, not left for the sweeper
        assert await store.redis.hget(keys.job(second), "held") is None
    run(go())


def test_an_accounts_own_work_is_handed_out_by_priority_then_submission():
    async def go():
        store = store_with(1)
        limiter = Limiter(store.redis, store.settings)
        first = await submit(store, "a")
        low = await submit(store, "a", "low")
        default = await submit(store, "a")
        high = await submit(store, "a", "high")
        order = []
        job = first
        for _ in range(3):
            admission = await limiter.admit(job_id=job, account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
            (job,) = admission.released
            order.append(job)
        assert order == [high, default, low]
    run(go())


def test_a_cancelled_held_back_job_leaves_the_line():
    async def go():
        store = store_with(1)
        limiter = Limiter(store.redis, store.settings)
        first, held, after = [await submit(store, "a") for _ in range(3)]
        assert (await store.cancel(held, "a", "m"))[0] == "cancelled"
        admission = await limiter.admit(job_id=first, account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
        assert admission.released == [after]
    run(go())


def test_the_sweeper_hands_out_what_a_lost_worker_did_not():
    async def go():
        store = store_with(1)
        limiter = Limiter(store.redis, store.settings)
        first, second, third = [await submit(store, "a") for _ in range(3)]
        # The worker that took the first job is lost after its admission handed the second out,
        # before it queued it: the second is counted on the queue, yet held back.
        admission = await limiter.admit(job_id=first, account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
        assert admission.released == [second]
        assert await on_queue(store) == [first]
        member = f"a|{QUEUE}"
        listed = await store.redis.zscore(keys.fair_accounts_of("a"), member)
        assert listed is not None
        sweeper = AccountsSweeper(store, store.settings)
        # Looked at before the look-again time: nothing is released twice meanwhile.
        await store.redis.zadd(keys.fair_queued("a", QUEUE), {second: time.time() * 1000})
        assert await sweeper.fill(member) == 0
        # Ten seconds on: the second is released again, and queued (once).
        await store.redis.zadd(keys.fair_queued("a", QUEUE), {second: time.time() * 1000 - 11_000})
        assert await sweeper.fill(member) == 1
        assert await on_queue(store) == [first, second]
        assert await store.redis.hget(keys.job(third), "held") == "1"  # its account's one place is taken
    run(go())


def test_places_a_lost_message_held_free_up_after_the_stale_time():
    async def go():
        store = store_with(1)
        first = await submit(store, "a")
        second = await submit(store, "a")
        assert await on_queue(store) == [first]
        # Its message lost: no worker ever takes it (the reaper queues it again). Past the stale
        # time the sweeper frees its place, and the account's next job goes.
        stale = time.time() * 1000 - store.settings.fair_share_stale_seconds * 1000 - 1
        await store.redis.zadd(keys.fair_queued("a", QUEUE), {first: stale})
        assert await AccountsSweeper(store, store.settings).fill(f"a|{QUEUE}") == 1
        assert await on_queue(store) == [first, second]
        assert await store.redis.zrange(keys.fair_queued("a", QUEUE), 0, -1) == [second]
    run(go())


def test_an_account_with_nothing_left_is_no_longer_swept():
    async def go():
        store = store_with(2)
        limiter = Limiter(store.redis, store.settings)
        job = await submit(store, "a")
        member = f"a|{QUEUE}"
        assert await store.redis.zscore(keys.fair_accounts_of("a"), member) is not None
        await limiter.admit(job_id=job, account_id="a", submitted_at=1.0, queue=QUEUE, **COMMON)
        await AccountsSweeper(store, store.settings).fill(member)
        assert await store.redis.zscore(keys.fair_accounts_of("a"), member) is None
    run(go())
