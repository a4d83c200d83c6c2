"""Every job state transition, against the Lua scripts themselves (fakeredis runs them)."""

import base64
import json
import time

import orjson
import pytest

from api.usage import read_usage
from shared import keys
from shared.events import END, TOKEN, read_events
from shared.jobs import JobStore
from shared.jobspec import JobSpec, Sampling, Turn
from shared.usage import record
from tests.unit.jobstores import SPEC, new_job, run

USAGE = record(None, "m", 3, 2, None)


def test_create_records_and_queues_in_one_step(store):
    async def go():
        returned = await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec=SPEC)
        job_id = returned["id"]
        record = await store.get(job_id)
        assert record["status"] == "queued" and record["account_id"] == "acct" and record["attempts"] == "0"
        assert JobSpec.load(record["spec"]) == SPEC
        assert returned == {k: v for k, v in record.items() if k != "message"}
        retention = store.settings.job_retention_seconds
        assert retention - 5 < await store.redis.ttl(keys.job(job_id)) <= retention
        (raw,) = await store.redis.lrange(keys.QUEUE_LOCAL, 0, -1)
        assert record["message"] == raw  # kept for requeue_lost
        message = json.loads(raw)
        assert message["headers"]["id"] == job_id
        assert json.loads(base64.b64decode(message["body"]))[0] == [job_id]
        assert await store.redis.zscore(keys.queued_of(job_id), job_id) == float(record["created_at"])
        listed = await store.redis.zscore(keys.account_jobs("acct", keys.shard_of(job_id)), job_id)
        assert listed == float(record["created_at"])
        assert retention - 5 < await store.redis.ttl(keys.account_jobs("acct", keys.shard_of(job_id))) <= retention
        assert await store.get_for(job_id, "someone-else") is None
    run(go())


def test_a_create_made_again_changes_nothing(store):
    """A create whose reply was lost is made again with the same id: one record, one message."""
    async def go():
        job_id = await new_job(store)
        assert (await store.claim(job_id, "a")).outcome == "claimed"
        await store.create(account_id="acct", model="m", queue=keys.QUEUE_LOCAL, spec=SPEC, job_id=job_id)
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
        assert await store.redis.zscore(keys.running_of(job_id), job_id) is None
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
        # Both attempts were admitted (each sent the prompt upstream) before their workers died.
        spec = JobSpec(model="m", messages=(Turn("user", "x" * 400),), params=Sampling(temperature=0.2, max_tokens=16),
                       prompt_bytes=400)
        await store.redis.hset(keys.job(job_id), mapping={"admitted": 2, "spec": spec.dump().decode()})
        await store.fail_unclaimed(job_id, "redelivery_limit", "gave up")
        record = await store.get(job_id)
        assert record["status"] == "failed" and record["attempts"] == "2"
        assert orjson.loads(record["error"])["code"] == "redelivery_limit"
        usage = orjson.loads(record["usage"])
        assert usage["prompt_tokens"] == 2 * 100 and usage["estimated"]
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
        await redis.zadd(keys.throttled_of("acct"), {"acct": 123_000})
        assert not await store.requeue_waiting(late, "acct")
        assert await redis.hget(keys.job(late), "status") == "throttled"
        assert await redis.zscore(keys.throttled_of("acct"), "acct") == 123_000
        await redis.zrem(keys.throttled_of("acct"), "acct")  # lost: a stale requeue restores one
        assert not await store.requeue_waiting(late, "acct")
        assert await redis.zscore(keys.throttled_of("acct"), "acct") is not None

        assert await store.requeue_waiting(early, "acct")
        assert await redis.hget(keys.job(early), "status") == "queued"

        release = dict(keys=[line, keys.throttled_of("acct")], args=["acct"])
        assert await store.scripts.release_account(**release) == 0
        assert await redis.zscore(keys.throttled_of("acct"), "acct") is not None
        await redis.delete(line)
        assert await store.scripts.release_account(**release) == 1
        assert await redis.zscore(keys.throttled_of("acct"), "acct") is None
    run(go())
