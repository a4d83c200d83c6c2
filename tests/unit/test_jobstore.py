"""Every job state transition, against the Lua scripts themselves (fakeredis runs them)."""

import asyncio
import base64
import json
import time

import fakeredis
import orjson
import pytest

from shared import keys
from shared.events import read_events
from shared.jobs import END, TOKEN, JobStore
from shared.settings import Settings
from shared.usage import read_usage, record

USAGE = record(None, "m", 3, 2, None)


@pytest.fixture
def store():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return JobStore(redis, Settings(max_deliveries=2, lease_seconds=5))


def run(coro):
    return asyncio.run(coro)


async def new_job(store, queue=keys.QUEUE_LOCAL):
    record = await store.create(account_id="acct", model="m", queue=queue, spec={"model": "m"})
    return record["id"]


def test_create_records_and_queues_in_one_step(store):
    async def go():
        returned = await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec={"model": "m"})
        job_id = returned["id"]
        record = await store.get(job_id)
        assert record["status"] == "queued" and record["account_id"] == "acct" and record["attempts"] == "0"
        assert orjson.loads(record["spec"]) == {"model": "m"}
        assert returned == {k: v for k, v in record.items() if k != "message"}
        retention = store.settings.job_retention_seconds
        assert retention - 5 < await store.redis.ttl(keys.job(job_id)) <= retention
        (raw,) = await store.redis.lrange(keys.QUEUE_LOCAL, 0, -1)
        assert record["message"] == raw  # kept for requeue_lost
        message = json.loads(raw)
        assert message["headers"]["id"] == job_id
        assert json.loads(base64.b64decode(message["body"]))[0] == [job_id]
        assert await store.redis.zscore(keys.QUEUED_JOBS, job_id) == float(record["created_at"])
        assert await store.redis.zscore(keys.account_jobs("acct"), job_id) == float(record["created_at"])
        assert retention - 5 < await store.redis.ttl(keys.account_jobs("acct")) <= retention
        assert await store.get_for(job_id, "someone-else") is None
    run(go())


def test_a_create_made_again_changes_nothing(store):
    """A create whose reply was lost is made again with the same id: one record, one message."""
    async def go():
        job_id = await new_job(store)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec={"model": "m"}, job_id=job_id)
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 1
        record = await store.get(job_id)
        assert record["status"] == "running" and record["attempts"] == "1"
    run(go())


def test_a_job_is_owned_by_one_attempt_at_a_time(store):
    async def go():
        job_id = await new_job(store)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        busy = await store.claim(job_id, "b")
        assert busy.outcome == "busy"
        assert await store.publish(job_id, "b", [(1, TOKEN, "{}")]) == -1  # fenced
        assert await store.publish(job_id, "a", [(1, TOKEN, "{}")]) == 0
        assert not await store.finish(job_id, "b", "succeeded", {}, [], "acct", USAGE)
        assert await store.finish(job_id, "a", "succeeded", {"result": "{}"}, [(2, END, "{}")], "acct", USAGE)
        assert not await store.finish(job_id, "a", "succeeded", {"result": "{}"}, [(3, END, "{}")], "acct", USAGE)
        assert (await store.claim(job_id, "c")).outcome == "terminal"
        assert [e.seq for e in await read_events(store.redis, job_id)] == [1, 2]
        record = await store.get(job_id)
        assert record["status"] == "succeeded" and record["attempts"] == "1"
        assert await store.redis.zscore(keys.RUNNING_JOBS, job_id) is None
        # One usage record, however many attempts tried to finish.
        from datetime import date
        (row,) = await read_usage(store.redis, "acct", date(2000, 1, 1), date(2100, 1, 1))
        assert (row["requests"], row["succeeded"], row["prompt_tokens"], row["completion_tokens"]) == (1, 1, 3, 2)
    run(go())


class MadeTwice:
    """Every script call run twice with the same arguments, the second answer returned: a call
    whose reply was lost, made again (as the script channel and redis-py retry)."""

    def __init__(self, scripts):
        self.scripts = scripts

    def __getattr__(self, name):
        script = getattr(self.scripts, name)

        async def twice(keys=(), args=()):
            await script(keys=keys, args=args)
            return await script(keys=keys, args=args)
        return twice


def test_claims_and_ending_calls_made_again_answer_the_same_and_change_nothing(store):
    async def go():
        from datetime import date
        again = JobStore(store.redis, store.settings)
        again.scripts = MadeTwice(again.scripts)
        job_id = await new_job(store)
        claim = await again.claim(job_id, "a")
        assert (claim.outcome, claim.attempts, claim.record["worker"]) == ("claimed", 1, "a")
        assert await again.park(job_id, "a", 1, time.time() + 5, "rpm") == "parked"
        assert (await store.get(job_id))["attempts"] == "0"  # waiting is not a delivery, once
        assert (await again.claim(job_id, "b")).attempts == 1
        assert await again.finish(job_id, "b", "succeeded", {"result": "{}"}, [(2, END, "{}")], "acct", USAGE)
        (row,) = await read_usage(store.redis, "acct", date(2000, 1, 1), date(2100, 1, 1))
        assert (row["requests"], row["succeeded"]) == (1, 1)  # counted once

        other = await new_job(store)
        assert (await again.claim(other, "c")).attempts == 1
        assert await again.hand_back(other, "c")
        assert (await store.get(other))["attempts"] == "0"
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 3  # the two jobs' messages, and one more

        # An ending call that is not a replay still finds the job lost.
        assert not await again.finish(job_id, "a", "succeeded", {"result": "{}"}, [(3, END, "{}")], "acct", USAGE)
    run(go())


def test_event_ids_must_grow(store):
    async def go():
        job_id = await new_job(store)
        await store.claim(job_id, "a")
        await store.publish(job_id, "a", [(1, TOKEN, "x")])
        with pytest.raises(Exception, match="could not append"):
            await store.publish(job_id, "a", [(1, TOKEN, "again")])
        # A call retried after its reply was lost finds its own events there: not an error,
        # and nothing is written twice.
        assert await store.publish(job_id, "a", [(1, TOKEN, "x"), (2, TOKEN, "y")]) == 0
        assert await store.publish(job_id, "a", [(1, TOKEN, "x"), (2, TOKEN, "y")]) == 0
        assert [(e.seq, e.data) for e in await read_events(store.redis, job_id)] == [(1, "x"), (2, "y")]
    run(go())


def test_cancel_a_queued_job_ends_it_at_once(store):
    async def go():
        job_id = await new_job(store)
        assert await store.cancel(job_id, "acct", "m") == ("cancelled", "")
        assert (await store.get(job_id))["status"] == "cancelled"
        events = await read_events(store.redis, job_id)
        assert [(e.seq, e.type) for e in events] == [(1, END)]
        assert (await store.claim(job_id, "a")).outcome == "terminal"
        assert await store.cancel(job_id, "acct", "m") == ("terminal", "cancelled")
    run(go())


def test_cancel_a_running_job_flags_it_for_its_worker(store):
    async def go():
        job_id = await new_job(store)
        await store.claim(job_id, "a")
        assert await store.cancel(job_id, "acct", "m") == ("requested", "")
        assert (await store.get(job_id))["status"] == "running"
        assert await store.publish(job_id, "a", [(1, TOKEN, "x")]) == 1
        assert await store.renew(job_id, "a") == (True, True)
    run(go())


def test_redelivery_cap(store):
    async def go():
        job_id = await new_job(store)
        for token in ("a", "b"):
            assert (await store.claim(job_id, token)).outcome == "claimed"
            await store.redis.delete(keys.job_lease(job_id))  # the worker died
        claim = await store.claim(job_id, "c")
        assert claim.outcome == "exhausted" and claim.attempts == 2
        await store.fail_unclaimed(job_id, "redelivery_limit", "gave up")
        record = await store.get(job_id)
        assert record["status"] == "failed" and record["attempts"] == "2"
        assert orjson.loads(record["error"])["code"] == "redelivery_limit"
    run(go())


def test_lapsed_lease_is_requeued_once(store):
    async def go():
        job_id = await new_job(store)
        await store.redis.delete(keys.QUEUE_LOCAL)
        await store.claim(job_id, "a")
        assert not await store.requeue_lapsed(job_id)  # lease still held
        await store.redis.delete(keys.job_lease(job_id))
        assert job_id in await store.lapsed_jobs(now=10**12)
        assert await store.requeue_lapsed(job_id)
        assert not await store.requeue_lapsed(job_id)
        assert (await store.get(job_id))["status"] == "queued"
        assert await store.redis.llen(keys.QUEUE_LOCAL) == 1
    run(go())


def test_a_claim_carries_the_record_and_the_events_already_published(store):
    async def go():
        job_id = await new_job(store)
        first = await store.claim(job_id, "a")
        assert first.record["status"] == "running" and first.record["account_id"] == "acct"
        assert first.record["attempts"] == "1" and first.events == []
        assert await store.publish(job_id, "a", [(1, TOKEN, '{"x":1}'), (2, TOKEN, '{"x":2}')]) == 0
        await store.redis.delete(keys.job_lease(job_id))  # the first attempt's worker died
        second = await store.claim(job_id, "b")
        assert second.outcome == "claimed" and second.attempts == 2
        assert second.events == [(1, TOKEN, '{"x":1}'), (2, TOKEN, '{"x":2}')]
        assert second.record["worker"] == "b"
    run(go())


def test_admission_without_any_limit_records_nothing_to_settle():
    from shared.limiter import Limiter

    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings())
        common = dict(model="m", deployment="d", deployment_rpm=None, deployment_tpm=None, tokens=10,
                      submitted_at=1.0)
        free = await limiter.admit(job_id="j1", account_id="free", **common)
        assert (free.outcome, free.holds) == ("admitted", False)
        assert not [k for k in await redis.keys("*") if k.startswith(keys.rate("", "").split("::")[0] + ":")]
        await redis.hset(keys.account("capped"), mapping={"rpm": 5})
        capped = await limiter.admit(job_id="j2", account_id="capped", **common)
        assert (capped.outcome, capped.holds) == ("admitted", True)
        assert await redis.zcard(keys.rate("acct:capped", "req")) == 1
        on_deployment = await limiter.admit(job_id="j3", account_id="free",
                                            **{**common, "deployment_rpm": 100})
        assert (on_deployment.outcome, on_deployment.holds) == ("admitted", True)
        assert await redis.zcard(keys.rate("dep:d", "req")) == 1
    run(go())


def test_a_job_submitted_before_the_first_in_line_takes_its_place():
    """Deliveries race: a job can reach admission after a later one of its account became first
    in line. It goes ahead of that one, and the account's wake-up time is the window's end again
    even if a requeue had pushed it to its watchdog (a stall of seconds otherwise)."""
    from shared.limiter import Limiter

    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(rate_window_seconds=3))
        await redis.hset(keys.account("a"), mapping={"rpm": 1})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=None, deployment_tpm=None,
                      tokens=10)
        assert (await limiter.admit(job_id="j1", submitted_at=1.0, **common)).outcome == "admitted"
        later = await limiter.admit(job_id="j3", submitted_at=3.0, **common)
        assert later.outcome == "waiting" and "requests-per-window" in later.reason
        window_end = int(later.retry_at * 1000)
        await redis.zadd(keys.THROTTLED_ACCOUNTS, {"a": window_end + 5000})  # a requeue's watchdog
        earlier = await limiter.admit(job_id="j2", submitted_at=2.0, **common)
        assert earlier.outcome == "waiting" and "requests-per-window" in earlier.reason
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j2", "j3"]
        assert await redis.zscore(keys.THROTTLED_ACCOUNTS, "a") == pytest.approx(window_end, abs=100)
        # Behind the first in line, a later job only queues up and leaves the wake-up time be.
        last = await limiter.admit(job_id="j4", submitted_at=4.0, **common)
        assert last.outcome == "waiting" and "behind" in last.reason
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j2", "j3", "j4"]
        # With room in the window, an earlier job that was never in line is admitted ahead of
        # the first in line, and hands the turn on to it.
        await redis.hset(keys.account("a"), "rpm", 10)
        first = await limiter.admit(job_id="j0", submitted_at=0.5, **common)
        assert (first.outcome, first.next_job) == ("admitted", "j2")
    run(go())


def test_an_admission_made_again_answers_as_the_first_did():
    """The reply to an admission is lost; meanwhile an earlier job of the account joins the
    line; the admission made again is still admitted, and counted once."""
    from shared.limiter import Limiter

    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings())
        await redis.hset(keys.account("a"), mapping={"rpm": 1, "max_concurrency": 5})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=None, deployment_tpm=None,
                      tokens=10)
        assert (await limiter.admit(job_id="j2", submitted_at=2.0, **common)).outcome == "admitted"
        assert (await limiter.admit(job_id="j1", submitted_at=1.0, **common)).outcome == "waiting"
        again = await limiter.admit(job_id="j2", submitted_at=2.0, **common)
        assert (again.outcome, again.next_job, again.holds) == ("admitted", "j1", True)
        assert await redis.zrange(keys.rate("acct:a", "req"), 0, -1) == ["j2"]
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j1"]
    run(go())


def test_a_job_whose_cancel_was_requested_is_not_parked(store):
    async def go():
        job_id = await new_job(store)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        assert (await store.cancel(job_id, "acct", "m"))[0] == "requested"  # mid-admission
        assert await store.park(job_id, "b", 1, 100.0, "limit") == "lost"
        assert await store.park(job_id, "a", 1, 100.0, "limit") == "cancel"
        assert await store.redis.hget(keys.job(job_id), "status") == "running"  # still the attempt's
        assert await store.redis.get(keys.job_lease(job_id)) == "a"
    run(go())


def test_only_the_first_in_line_is_requeued_and_a_line_keeps_its_wake_up(store):
    """A requeue decided on a stale view of the line (another job went first meanwhile) leaves
    both jobs and the account's wake-up time alone; an account is forgotten only once its line
    is empty."""
    async def go():
        redis = store.redis
        early, late = await new_job(store), await new_job(store)
        line = keys.account_waiting("acct")
        for job_id, score in ((early, 1.0), (late, 2.0)):
            assert (await store.claim(job_id, f"t-{job_id}")).outcome == "claimed"
            assert await store.park(job_id, f"t-{job_id}", 1, 100.0, "requests-per-window limit") == "parked"
            await redis.zadd(line, {job_id: score})
        await redis.zadd(keys.THROTTLED_ACCOUNTS, {"acct": 123_000})
        assert not await store.requeue_waiting(late, "acct")
        assert await redis.hget(keys.job(late), "status") == "throttled"
        assert await redis.zscore(keys.THROTTLED_ACCOUNTS, "acct") == 123_000
        await redis.zrem(keys.THROTTLED_ACCOUNTS, "acct")  # lost: a stale requeue restores one
        assert not await store.requeue_waiting(late, "acct")
        assert await redis.zscore(keys.THROTTLED_ACCOUNTS, "acct") is not None

        assert await store.requeue_waiting(early, "acct")
        assert await redis.hget(keys.job(early), "status") == "queued"

        release = dict(keys=[line, keys.THROTTLED_ACCOUNTS], args=["acct"])
        assert await store.scripts.release_account(**release) == 0
        assert await redis.zscore(keys.THROTTLED_ACCOUNTS, "acct") is not None
        await redis.delete(line)
        assert await store.scripts.release_account(**release) == 1
        assert await redis.zscore(keys.THROTTLED_ACCOUNTS, "acct") is None
    run(go())


def test_a_message_lost_between_the_queue_and_a_worker_is_replaced_once_sure(store):
    """kombu takes a message off the queue before recording it as unacknowledged: a worker
    killed in between loses it. The reaper gives such a job a new message, and only then."""
    async def go():
        on_queue = await new_job(store)
        assert await store.requeue_lost(older_than=0) == []  # its message is on the queue
        held = await new_job(store)
        lost = await new_job(store)
        claimed = await new_job(store)
        # Three messages taken off the queue (oldest first, like BRPOP): one a worker recorded
        # as unacknowledged, one that vanished with its worker, one that was started.
        raws = [await store.redis.rpop(keys.QUEUE_LOCAL) for _ in range(4)]
        by_job = {json.loads(raw)["headers"]["id"]: raw for raw in raws}
        await store.redis.lpush(keys.QUEUE_LOCAL, by_job[on_queue])
        tag = json.loads(by_job[held])["properties"]["delivery_tag"]
        await store.redis.hset("unacked", tag, json.dumps([json.loads(by_job[held]), "", keys.QUEUE_LOCAL]))
        assert (await store.claim(claimed, "w")).outcome == "claimed"
        assert "message" not in await store.get(claimed)

        assert await store.requeue_lost(older_than=3600) == []  # not old enough to be sure
        assert await store.requeue_lost(older_than=0) == [lost]
        queue = [json.loads(m)["headers"]["id"] for m in await store.redis.lrange(keys.QUEUE_LOCAL, 0, -1)]
        assert sorted(queue) == sorted([on_queue, lost])
        assert (await store.get(lost))["status"] == "queued"
        assert await store.requeue_lost(older_than=0) == []  # its new message is on the queue
        assert await store.redis.zscore(keys.QUEUED_JOBS, claimed) is None
    run(go())
