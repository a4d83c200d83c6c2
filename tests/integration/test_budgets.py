"""Dollar budgets that never overshoot, keys with their own scope, priorities, and fair share
across accounts: against the real fleet (Redis, worker processes, the API over HTTP)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import openai
import pytest

from shared import keys
from shared.connections import sync_redis
from tests.helpers import FAST, new_account, poll_until_done, read_sse, wait_for

pytestmark = pytest.mark.integration

NANO = 1e9
SLOW_MODEL = "gemini-1.5-pro-preview-0514"


def nano(usd: float) -> int:
    return round(usd * NANO)


def budget_of(client, scope: str = "account", key_id: str | None = None) -> dict:
    budgets = client.get("/v4/usage").json()["budgets"]
    return next(b for b in budgets if b["scope"] == scope and b["key_id"] == key_id)


def new_key(stack, account_id: str, **body) -> dict:
    with stack.admin() as admin:
        r = admin.post(f"/v4/admin/accounts/{account_id}/api-keys", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def cost_of_one(stack) -> float:
    """What one FAST request costs (an account without a budget)."""
    _, key = new_account(stack)
    with stack.client(key) as client:
        job = poll_until_done(client, client.post("/v4/jobs", json=FAST).json()["id"])
    assert job["status"] == "succeeded"
    return job["usage"]["cost_usd"]


def worst_case(errors: list[dict]) -> int:
    """The worst case admission held for a request, as a refusal states it."""
    (found,) = {re.search(r"may cost up to \$([0-9.]+)", e["message"]).group(1) for e in errors}
    return nano(float(found))


def test_200_concurrent_requests_spend_at_most_the_budget_and_within_one_request_of_it(stack):
    one = cost_of_one(stack)
    budget = 20 * one
    account_id, key = new_account(stack, budget_usd=budget, budget_period="day")
    with stack.client(key) as client:
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda _: client.post("/v4/jobs", json=FAST).json()["id"], range(200)))
        done = [poll_until_done(client, i, timeout=120) for i in ids]
        state = budget_of(client)
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()["data"]
    succeeded = [d for d in done if d["status"] == "succeeded"]
    refused = [d for d in done if d["status"] == "failed"]
    assert len(succeeded) + len(refused) == 200
    assert {d["error"]["code"] for d in refused} == {"budget_exceeded"}
    spent = sum(nano(d["usage"]["cost_usd"]) for d in succeeded)
    # Never past the budget; and no room left for one more request's worst case.
    assert spent <= nano(budget)
    assert nano(budget) - spent < worst_case([d["error"] for d in refused])
    # The budget's books and the usage ledger agree to the nano-dollar; nothing is left held.
    assert nano(state["spent_usd"]) == spent and state["reserved_usd"] == 0
    assert nano(state["remaining_usd"]) == nano(budget) - spent
    assert sum(nano(r["cost_usd"]) for r in usage) == spent
    assert state["period"] == "day" and state["period_id"] == datetime.now(UTC).date().isoformat()
    redis = sync_redis(stack.state_url)
    assert redis.hlen(keys.budget_holds(account_id)) == 0


def test_past_its_budget_a_request_gets_openais_insufficient_quota_and_a_clear_error_on_v4(stack):
    account_id, key = new_account(stack, budget_usd=0.000001)  # less than any request's worst case
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=3)
    assert refused.value.status_code == 429 and refused.value.code == "budget_exceeded"
    assert refused.value.body["type"] == "insufficient_quota"
    assert "Retry-After" not in refused.value.response.headers
    with stack.client(key) as v4:
        r = v4.post("/v4/chat-completions", json=FAST)
        assert r.status_code == 429 and "account budget of $0.000001 (" in r.json()["detail"]
        job = poll_until_done(v4, v4.post("/v4/jobs", json=FAST).json()["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "budget_exceeded"
        assert job["usage"]["cost_usd"] == 0  # it never ran


def test_a_keys_budget_runs_out_while_its_account_has_room(stack):
    account_id, _ = new_account(stack, budget_usd=1.0)
    tight = new_key(stack, account_id, name="ci", limits={"budget_usd": 0.000001, "budget_period": "total"})
    roomy = new_key(stack, account_id, name="app")
    assert tight["name"] == "ci" and tight["limits"]["budget_usd"] == 0.000001
    with stack.client(tight["key"]) as client:
        job = poll_until_done(client, client.post("/v4/jobs", json=FAST).json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "budget_exceeded"
    assert job["error"]["message"].startswith("API key budget")
    with stack.client(roomy["key"]) as client:
        ok = poll_until_done(client, client.post("/v4/jobs", json=FAST).json()["id"])
        assert ok["status"] == "succeeded"
        account = budget_of(client)
        key_budget = budget_of(client, "key", tight["id"])
        by_key = client.get("/v4/usage", params={"group_by": "key"}).json()["data"]
    assert nano(account["spent_usd"]) == nano(ok["usage"]["cost_usd"])
    assert key_budget["spent_usd"] == 0 and key_budget["period"] == "total"
    rows = {r["key_id"]: r for r in by_key}
    assert rows[roomy["id"]]["requests"] == 1 and nano(rows[roomy["id"]]["cost_usd"]) == nano(ok["usage"]["cost_usd"])
    assert rows[tight["id"]]["failed"] == 1 and rows[tight["id"]]["cost_usd"] == 0


def test_a_worker_killed_mid_job_leaves_no_double_charge_and_its_hold_comes_back(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url)
    fake = own_stack.fake
    account_id, key = new_account(stack, budget_usd=1.0)
    fake.config(tokens_per_s=1, tokens=40)  # ~40 s per job: still running when its worker is killed
    redis = sync_redis(stack.state_url)
    with stack.client(key) as client:
        slow = client.post("/v4/jobs", json={**FAST, "model_parameters": {"max_tokens": 40}}).json()
        with client.stream("GET", f"/v4/jobs/{slow['id']}/stream") as r:
            read_sse(r, limit=2)
        held = budget_of(client)["reserved_usd"]
        assert held > 0 and redis.hexists(keys.budget_holds(account_id), slow["id"])
        fake.config(tokens_per_s=0)
        stack.fleet.kill("worker-interactive")
        stack.start_worker("worker-interactive-2", [keys.QUEUE_INTERACTIVE], 20)
        done = poll_until_done(client, slow["id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 2, stack.logs()
        # Admitted again on the hold it had (no second reservation), settled once.
        state = wait_for(lambda: (s := budget_of(client))["reserved_usd"] == 0 and s, timeout=30,
                         what="the hold to be settled")
    assert nano(state["spent_usd"]) == nano(done["usage"]["cost_usd"]) > 0
    assert redis.hlen(keys.budget_holds(account_id)) == 0


def test_a_lost_settlement_is_made_by_the_sweeper_from_the_jobs_record(stack):
    """A worker lost between the job's finish and its settlement: the hold's watch lapses and
    the sweeper spends the cost the job's record keeps, once."""
    account_id, key = new_account(stack, budget_usd=1.0)
    redis = sync_redis(stack.state_url)
    with stack.client(key) as client:
        job = poll_until_done(client, client.post("/v4/jobs", json=FAST).json()["id"])
        wait_for(lambda: budget_of(client)["reserved_usd"] == 0, what="the settlement")
        cost = nano(job["usage"]["cost_usd"])
        # As if the settlement had never been made: the hold is back, the spend undone.
        pid = budget_of(client)["period_id"]
        redis.hincrby(keys.budget(account_id), f"reserved:{pid}", 5_000_000)
        redis.hincrby(keys.budget(account_id), f"spent:{pid}", -cost)
        redis.hset(keys.budget_holds(account_id), job["id"], f"5000000|{pid}||")
        redis.zadd(keys.budget_due_of(account_id), {f"{account_id}|{job['id']}": time.time() * 1000 - 1})
        state = wait_for(lambda: (s := budget_of(client))["reserved_usd"] == 0 and s, timeout=30,
                         what="the sweeper's settlement")
    assert nano(state["spent_usd"]) == cost


# --- keys with their own scope -----------------------------------------------------------------


def test_a_key_is_scoped_to_its_models_limits_and_expiry(stack):
    account_id, _ = new_account(stack)
    scoped = new_key(stack, account_id, name="frontend", models=["gpt-4o-mini"], limits={"rpm": 1})
    assert scoped["models"] == ["gpt-4o-mini"] and scoped["limits"]["rpm"] == 1
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=scoped["key"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with stack.client(scoped["key"]) as v4:
        r = v4.post("/v4/jobs", json={**FAST, "model": "gpt-4o"})
        assert r.status_code == 400 and "not available" in r.json()["detail"]
        # The key's rpm of 1 holds though its account has none: its second job waits.
        first = v4.post("/v4/jobs", json=FAST).json()["id"]
        second = v4.post("/v4/jobs", json=FAST).json()["id"]
        poll_until_done(v4, first)
        waiting = wait_for(lambda: (j := v4.get(f"/v4/jobs/{second}").json())["status"] == "throttled" and j,
                           what="the key's limit to hold the second job")
        assert "API key requests-per-window" in waiting["throttle_reason"]
    with stack.admin() as admin:
        changed = admin.patch(f"/v4/admin/api-keys/{scoped['id']}",
                              json={"models": None, "limits": {"rpm": None}, "name": "frontend-2"}).json()
        assert (changed["models"], changed["limits"]["rpm"], changed["name"]) == (None, None, "frontend-2")
        assert admin.patch(f"/v4/admin/api-keys/{scoped['id']}", json={"models": ["no-such"]}).status_code == 400
        assert admin.patch("/v4/admin/api-keys/key_missing", json={"name": "x"}).status_code == 404
        for far in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:30:00+01:00"):  # past year 9999 / before 1970
            r = admin.patch(f"/v4/admin/api-keys/{scoped['id']}", json={"expires_at": far})
            assert r.status_code == 400 and "expires_at" in r.text
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        r = admin.post(f"/v4/admin/accounts/{account_id}/api-keys", json={"expires_at": past})
        assert r.status_code == 400 and "expires_at" in r.text
        soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
        assert admin.patch(f"/v4/admin/api-keys/{scoped['id']}", json={"expires_at": soon}).status_code == 200
    assert [m.id for m in client.models.list()].count("gpt-4o") == 1  # every model again
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with stack.admin() as admin:
        listed = {k["id"]: k for k in admin.get(f"/v4/admin/accounts/{account_id}/api-keys").json()["data"]}
        assert listed[scoped["id"]]["expired"] is True and "key" not in listed[scoped["id"]]


# --- priority and fair share ------------------------------------------------------------------


def test_an_accounts_own_work_runs_by_priority_and_openais_service_tier_maps_onto_it(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url)
    fake = own_stack.fake
    account_id, key = new_account(stack, max_concurrency=1)
    # ~5 s for the first job, the others wait meanwhile: a model no other test calls (its name is
    # in the request's path), so that no other request takes the slow behaviour (the fake is shared).
    fake.script([{"tokens_per_s": 2, "tokens": 10}], family="gemini", path=f"*{SLOW_MODEL}*")
    slow = {**FAST, "model": SLOW_MODEL, "model_parameters": {"max_tokens": 10}}
    with stack.client(key) as client:
        running = client.post("/v4/jobs", json=slow).json()["id"]
        # Admitted (its start recorded), not only claimed: it holds the account's one slot.
        wait_for(lambda: client.get(f"/v4/jobs/{running}").json()["started_at"], what="the first job's admission")
        ids = {}
        for priority in ("low", "default", "high"):
            ids[priority] = client.post("/v4/jobs", json={**FAST, "priority": priority}).json()["id"]
            wait_for(lambda p=priority: client.get(f"/v4/jobs/{ids[p]}").json()["status"] == "throttled",
                     what=f"the {priority} job to wait")
        done = {p: poll_until_done(client, i) for p, i in ids.items()}
    started = sorted(done, key=lambda p: done[p]["started_at"])
    assert started == ["high", "default", "low"] and {d["priority"] for d in done.values()} == set(ids)
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3, service_tier="flex")
    with stack.client(key) as client:
        assert client.get(f"/v4/jobs/{raw.headers['x-chatfleet-job-id']}").json()["priority"] == "low"


def test_one_accounts_backlog_does_not_hold_another_accounts_jobs_behind_it(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url, CHATFLEET_FAIR_SHARE_QUEUED="4")
    fake = own_stack.fake
    fake.config(tokens_per_s=20, tokens=20)  # ~1 s a job; 50 at a time on the worker
    _, heavy = new_account(stack)
    _, light = new_account(stack)
    body = {**FAST, "model_parameters": {"max_tokens": 20}}
    with stack.client(heavy) as a, stack.client(light) as b, ThreadPoolExecutor(8) as pool:
        a_ids = list(pool.map(lambda _: a.post("/v4/jobs", json=body).json()["id"], range(400)))
        b_ids = [b.post("/v4/jobs", json=body).json()["id"] for _ in range(10)]
        b_done = [poll_until_done(b, i, timeout=120) for i in b_ids]
        a_done = [poll_until_done(a, i, timeout=240) for i in a_ids]
    assert {d["status"] for d in a_done + b_done} == {"succeeded"}
    b_submitted = max(d["created_at"] for d in b_done)
    b_last = max(d["finished_at"] for d in b_done)
    # The heavy account's backlog when the light account's jobs came (a worker that keeps up
    # runs some of the 400 while they are still being submitted):
    backlog = [d for d in a_done if d["finished_at"] > b_submitted]
    assert len(backlog) >= 100, len(backlog)  # there was one to be held behind
    # The light account's jobs waited behind at most 4 of the heavy one's, not its backlog: most
    # of that backlog finished after all of them (with fair share off, next to none of it does).
    after = sum(d["finished_at"] > b_last for d in backlog)
    assert after >= len(backlog) // 2, (after, len(backlog), b_last)
