"""Budgets in USD and API keys' own limits, against admit.lua, settle.lua and the sweeper's
scripts themselves (fakeredis runs them)."""

import time

import fakeredis
import orjson

from shared import keys
from shared.settings import Settings
from tests.unit.jobstores import fake_store, new_job, run
from worker.limits import Limiter, budget_periods
from worker.services.sweeper import AccountsSweeper

COMMON = dict(model="m", deployment="d", deployment_rpm=None, deployment_tpm=None, tokens=10, submitted_at=1.0)


def limiter() -> tuple[Limiter, fakeredis.FakeAsyncRedis]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return Limiter(redis, Settings(check_slots=True)), redis


async def budget_state(redis, account_id: str, key_id: str = "", period: str = "month") -> tuple[int, int]:
    day, month = budget_periods(time.time())
    pid = {"day": day, "month": month, "total": "total"}[period]
    state = await redis.hgetall(keys.budget(account_id, key_id))
    return int(state.get(f"spent:{pid}") or 0), int(state.get(f"reserved:{pid}") or 0)


def test_a_job_holds_its_worst_case_and_spends_its_real_cost_once():
    async def go():
        lim, redis = limiter()
        await redis.hset(keys.account("a"), mapping={"budget_nanousd": 1000, "budget_period": "day"})
        first = await lim.admit(job_id="j1", account_id="a", cost_nanousd=400, **COMMON)
        assert (first.outcome, first.holds) == ("admitted", True)
        assert await budget_state(redis, "a", period="day") == (0, 400)
        again = await lim.admit(job_id="j1", account_id="a", cost_nanousd=400, **COMMON)  # made again
        assert again.outcome == "admitted" and await budget_state(redis, "a", period="day") == (0, 400)
        assert (await lim.admit(job_id="j2", account_id="a", cost_nanousd=400, **COMMON)).outcome == "admitted"
        # A third would pass the budget beside what the two hold: it waits for them to settle.
        third = await lim.admit(job_id="j3", account_id="a", cost_nanousd=400, **COMMON)
        assert third.outcome == "waiting" and "budget" in third.reason
        settled = await lim.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=5,
                                   deployment_holds=False, cost_nanousd=150)
        assert settled.next_job == "j3"  # woken at once
        assert await budget_state(redis, "a", period="day") == (150, 400)
        # Settled again (a retried call): the hold is gone, nothing is spent twice.
        await lim.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=5,
                         deployment_holds=False, cost_nanousd=150)
        assert await budget_state(redis, "a", period="day") == (150, 400)
        assert (await lim.admit(job_id="j3", account_id="a", cost_nanousd=400, **COMMON)).outcome == "admitted"
        # Spent 150 + held 800: a job of 400 could never fit now, whatever settles: refused.
        over = await lim.admit(job_id="j4", account_id="a", cost_nanousd=900, **COMMON)
        assert over.outcome == "over_budget" and "$0.000001" in over.reason
        assert (over.crossing.scope, over.crossing.percent) == ("account", 100)
    run(go())


def test_a_keys_budget_and_limits_apply_with_the_accounts():
    async def go():
        lim, redis = limiter()
        await redis.hset(keys.account("a"), mapping={"budget_nanousd": 10_000})
        await redis.hset(keys.key_limits("a", "k1"), mapping={"budget_nanousd": 500, "budget_period": "total",
                                                              "rpm": 1})
        ok = await lim.admit(job_id="j1", account_id="a", key_id="k1", cost_nanousd=300, **COMMON)
        assert ok.outcome == "admitted"
        assert await budget_state(redis, "a", "k1", "total") == (0, 300)
        assert await budget_state(redis, "a") == (0, 300)  # the account's month holds it too
        # Another key of the account is not held by k1's limits, and the account has room.
        other = await lim.admit(job_id="j3", account_id="a", key_id="k2", cost_nanousd=300, **COMMON)
        assert other.outcome == "admitted"
        # The key's rpm of 1 is used: its next job waits, though the account has no rpm.
        limited = await lim.admit(job_id="j2", account_id="a", key_id="k1", cost_nanousd=100, **COMMON)
        assert limited.outcome == "waiting" and "API key requests-per-window" in limited.reason
        settled = await lim.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=3,
                                   deployment_holds=False, key_id="k1", cost_nanousd=420)
        assert [(c.scope, c.key_id, c.percent) for c in settled.crossings] == [("key", "k1", 80)]
        assert await budget_state(redis, "a", "k1", "total") == (420, 0)
        # 420 of 500 spent: a job that may cost 100 could never fit in the key's budget.
        over = await lim.admit(job_id="j2", account_id="a", key_id="k1", cost_nanousd=100, **COMMON)
        assert over.outcome == "over_budget" and over.reason.startswith("API key budget")
    run(go())


def test_a_refusal_by_the_deployment_gives_the_hold_back():
    async def go():
        lim, redis = limiter()
        await redis.hset(keys.account("a"), mapping={"budget_nanousd": 1000})
        common = {**COMMON, "deployment_rpm": 1}
        assert (await lim.admit(job_id="j1", account_id="a", cost_nanousd=300, **common)).outcome == "admitted"
        refused = await lim.admit(job_id="j2", account_id="a", cost_nanousd=300, **common)
        assert refused.outcome == "waiting" and "deployment" in refused.reason
        assert await budget_state(redis, "a") == (0, 300)
        assert await redis.hget(keys.budget_holds("a"), "j2") is None
    run(go())


def test_the_sweeper_settles_a_hold_its_worker_left_once_from_the_record():
    async def go():
        store = fake_store()
        lim = Limiter(store.redis, store.settings)
        redis = store.redis
        await redis.hset(keys.account("acct"), mapping={"budget_nanousd": 10_000})
        job_id = await new_job(store)
        assert (await lim.admit(job_id=job_id, account_id="acct", cost_nanousd=2000, **COMMON)).outcome == "admitted"
        sweeper = AccountsSweeper(store, store.settings)
        member = f"acct|{job_id}"
        # Still queued (its worker lost before it ended): watched again, not settled.
        assert await sweeper.sweep_hold(member) == []
        assert await budget_state(redis, "acct") == (0, 2000)
        assert await redis.zscore(keys.budget_due_of("acct"), member) > time.time() * 1000
        # It ended, billed 1234 nano-USD, and its worker was lost before settling.
        await redis.hset(keys.job(job_id), mapping={
            "status": "succeeded", "usage": orjson.dumps({"cost_usd": 1234 / 1e9}).decode()})
        await sweeper.sweep_hold(member)
        assert await budget_state(redis, "acct") == (1234, 0)
        assert await redis.zcard(keys.budget_due_of("acct")) == 0
        await sweeper.sweep_hold(member)  # looked at again: nothing more
        assert await budget_state(redis, "acct") == (1234, 0)
    run(go())


def test_a_job_admitted_again_after_its_worker_was_lost_goes_ahead_on_its_hold():
    """Its hold was reserved in its turn: a job waiting for that hold to settle, first in the
    account's line meanwhile, must not keep it out (each would wait for the other). And the new
    attempt is a new provider call: counted as admitted."""
    async def go():
        store = fake_store()
        lim = Limiter(store.redis, store.settings)
        redis = store.redis
        await redis.hset(keys.account("acct"), mapping={"budget_nanousd": 1000, "max_concurrency": 5})
        holder = await new_job(store)
        common = {**COMMON, "submitted_at": 2.0}
        assert (await lim.admit(job_id=holder, account_id="acct", cost_nanousd=600, attempt=1, **common)).outcome \
            == "admitted"
        waiting = await lim.admit(job_id="j-early", account_id="acct", cost_nanousd=600, attempt=1,
                                  **{**common, "submitted_at": 1.0})
        assert waiting.outcome == "waiting" and await redis.zrange(keys.account_waiting("acct"), 0, 0) == ["j-early"]
        # The holder's worker is lost (its concurrency lease lapses); its next attempt comes.
        await redis.delete(keys.account_rate("acct")[3])
        again = await lim.admit(job_id=holder, account_id="acct", cost_nanousd=600, attempt=2, **common)
        assert again.outcome == "admitted"
        assert await redis.hget(keys.job(holder), "admitted") == "2"
        assert await budget_state(redis, "acct") == (0, 600)  # no second reservation
        assert (await redis.hget(keys.budget_holds("acct"), holder)).endswith("|2")
    run(go())


def test_budgets_past_a_hundred_thousand_dollars_are_counted_exactly():
    async def go():
        lim, redis = limiter()
        budget = 2 * 10**14  # $200,000 in nano-USD
        await redis.hset(keys.account("a"), mapping={"budget_nanousd": budget})
        assert (await lim.admit(job_id="j1", account_id="a", cost_nanousd=budget - 5, **COMMON)).outcome == "admitted"
        settled = await lim.settle(job_id="j1", account_id="a", model="m", deployment="d", tokens=1,
                                   deployment_holds=False, cost_nanousd=budget - 5)
        assert [(c.percent, c.budget_nanousd, c.spent_nanousd) for c in settled.crossings] == [
            (80, budget, budget - 5)]
        over = await lim.admit(job_id="j2", account_id="a", cost_nanousd=10, **COMMON)
        assert over.outcome == "over_budget" and over.crossing.spent_nanousd == budget - 5
    run(go())


def test_a_fallback_is_tried_only_if_the_key_may_use_it_within_what_the_budget_holds():
    from shared.catalog import get_catalog
    from shared.jobspec import JobSpec, Sampling, Turn
    from worker.attempt import Attempt
    from worker.limits import worst_cost_nanousd

    catalog = get_catalog()
    cheap, dear = catalog.get("gpt-4o-mini"), catalog.get("gpt-4o")
    job = JobSpec(model=cheap.id, messages=(Turn("user", "hi" * 50),), params=Sampling(temperature=0.2, max_tokens=100),
                  prompt_bytes=100)
    assert worst_cost_nanousd(dear, job) > worst_cost_nanousd(cheap, job) > 0
    attempt = Attempt("j", "t", 0)
    assert attempt.may_fall_back_to(dear)  # no budget, no key scope: any fallback
    held = worst_cost_nanousd(cheap, job)
    attempt.affordable = lambda spec: worst_cost_nanousd(spec, job) <= held
    assert attempt.may_fall_back_to(cheap) and not attempt.may_fall_back_to(dear)
    attempt.affordable = None
    attempt.key_models = frozenset({cheap.id})
    assert not attempt.may_fall_back_to(dear)
