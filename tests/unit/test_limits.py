"""Admission under the fleet's limits (worker/limits.py), against admit.lua itself."""

import fakeredis
import pytest

from shared import keys
from shared.settings import Settings
from tests.unit.jobstores import run
from worker.limits import Limiter


def test_admission_without_any_limit_records_nothing_to_settle():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(check_slots=True))
        common = dict(model="m", deployment="d", deployment_rpm=None, deployment_tpm=None, tokens=10,
                      submitted_at=1.0)
        free = await limiter.admit(job_id="j1", account_id="free", **common)
        assert (free.outcome, free.holds) == ("admitted", False)
        assert not [k for k in await redis.keys("*") if ":rl:" in k]
        await redis.hset(keys.account("capped"), mapping={"rpm": 5})
        capped = await limiter.admit(job_id="j2", account_id="capped", **common)
        assert (capped.outcome, capped.holds) == ("admitted", True)
        assert await redis.zcard(keys.account_rate("capped")[0]) == 1
        on_deployment = await limiter.admit(job_id="j3", account_id="free",
                                            **{**common, "deployment_rpm": 100})
        assert (on_deployment.outcome, on_deployment.holds) == ("admitted", True)
        assert await redis.zcard(keys.deployment_rate("d")[0]) == 1
    run(go())


def test_a_job_submitted_before_the_first_in_line_takes_its_place():
    """Deliveries race: a job can reach admission after a later one of its account became first
    in line. It goes ahead of that one, and the account's wake-up time is the window's end again
    even if a requeue had pushed it to its watchdog (a stall of seconds otherwise)."""
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(rate_window_seconds=3, check_slots=True))
        await redis.hset(keys.account("a"), mapping={"rpm": 1})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=None, deployment_tpm=None,
                      tokens=10)
        assert (await limiter.admit(job_id="j1", submitted_at=1.0, **common)).outcome == "admitted"
        later = await limiter.admit(job_id="j3", submitted_at=3.0, **common)
        assert later.outcome == "waiting" and "requests-per-window" in later.reason
        window_end = int(later.retry_at * 1000)
        await redis.zadd(keys.throttled_of("a"), {"a": window_end + 5000})  # a requeue's watchdog
        earlier = await limiter.admit(job_id="j2", submitted_at=2.0, **common)
        assert earlier.outcome == "waiting" and "requests-per-window" in earlier.reason
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j2", "j3"]
        assert await redis.zscore(keys.throttled_of("a"), "a") == pytest.approx(window_end, abs=100)
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
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(check_slots=True))
        await redis.hset(keys.account("a"), mapping={"rpm": 1, "max_concurrency": 5})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=None, deployment_tpm=None,
                      tokens=10)
        assert (await limiter.admit(job_id="j2", submitted_at=2.0, **common)).outcome == "admitted"
        assert (await limiter.admit(job_id="j1", submitted_at=1.0, **common)).outcome == "waiting"
        again = await limiter.admit(job_id="j2", submitted_at=2.0, **common)
        assert (again.outcome, again.next_job, again.holds) == ("admitted", "j1", True)
        assert await redis.zrange(keys.account_rate("a")[0], 0, -1) == ["j2"]
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j1"]
    run(go())


def test_each_admission_is_counted_on_the_job_once():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(check_slots=True))
        await redis.hset(keys.account("a"), mapping={"rpm": 10})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=None, deployment_tpm=None,
                      tokens=10, submitted_at=1.0)
        await redis.hset(keys.job("j1"), "status", "running")  # its record, claimed
        assert (await limiter.admit(job_id="j1", **common)).outcome == "admitted"
        assert (await limiter.admit(job_id="j1", **common)).outcome == "admitted"  # made again: the same
        assert await redis.hget(keys.job("j1"), "admitted") == "1"
        # A job whose record is gone (expired) is not written again, without an expiry.
        assert (await limiter.admit(job_id="gone", **common)).outcome == "admitted"
        assert await redis.exists(keys.job("gone")) == 0
        await limiter.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=10)
        await redis.delete(keys.account_rate("a")[0])  # a later attempt, admitted anew
        assert (await limiter.admit(job_id="j1", **common)).outcome == "admitted"
        assert await redis.hget(keys.job("j1"), "admitted") == "2"
    run(go())


def test_a_deployment_refusal_gives_the_accounts_admission_back():
    """The account admits the job (its slot), the deployment refuses it (its own): the account's
    share is released and the job is first in its line, woken when the deployment can take it."""
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        limiter = Limiter(redis, Settings(check_slots=True))
        await redis.hset(keys.account("a"), mapping={"rpm": 10, "max_concurrency": 5})
        common = dict(account_id="a", model="m", deployment="d", deployment_rpm=1, deployment_tpm=None, tokens=10)
        first = await limiter.admit(job_id="j1", submitted_at=1.0, **common)
        assert (first.outcome, first.holds, first.deployment_holds) == ("admitted", True, True)
        second = await limiter.admit(job_id="j2", submitted_at=2.0, **common)
        assert second.outcome == "waiting" and "provider deployment requests-per-window" in second.reason
        req, tok, total, conc = keys.account_rate("a")
        assert await redis.zrange(req, 0, -1) == ["j1"] and await redis.zrange(conc, 0, -1) == ["j1"]
        assert await redis.hgetall(tok) == {"j1": "10"} and await redis.get(total) == "10"
        assert await redis.zrange(keys.account_waiting("a"), 0, -1) == ["j2"]
        assert await redis.zscore(keys.throttled_of("a"), "a") == pytest.approx(second.retry_at * 1000, abs=1)
        assert await redis.hget(keys.job("j2"), "admitted") is None  # no call was made for it
        # Settled, the first frees its lease in the account and its estimate becomes what it used.
        settled = await limiter.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=4)
        assert settled.next_job == "j2"
        assert await redis.zcard(conc) == 0 and await redis.get(total) == "4"
        assert await redis.hget(keys.deployment_rate("d")[1], "j1") == "4"
        # A request larger than the deployment's token window could ever take is refused at once.
        big = await limiter.admit(job_id="j3", submitted_at=3.0, **{**common, "deployment_tpm": 5})
        assert big.outcome == "too_large" and "provider deployment tokens-per-window" in big.reason
    run(go())
