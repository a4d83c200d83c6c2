"""Accounts, API keys, rate limits across worker processes, and exact usage."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from shared import keys
from shared.connections import sync_redis
from shared.queue import run_job_message
from tests.helpers import FAST, log_lines, new_account, poll_until_done, read_sse, wait_for

pytestmark = pytest.mark.integration

def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def first_event(client, job_id: str) -> str | None:
    with client.stream("GET", f"/v4/jobs/{job_id}/stream") as r:
        return read_sse(r, limit=1)[0]["event"]


# Moves an account's next wake-up a day away when it is more than ARGV[2] ms ahead of ARGV[3].
_HOLD_OFF = """
local at = redis.call("ZSCORE", KEYS[1], ARGV[1])
if at and tonumber(at) > tonumber(ARGV[3]) + tonumber(ARGV[2]) then
  redis.call("ZADD", KEYS[1], tonumber(ARGV[3]) + 86400000, ARGV[1])
  return 1
end
return 0
"""


@contextmanager
def line_watchdog_held_off(stack, account_id: str, beyond: float):
    """While in the block, any wake-up of the account's waiting line set more than ``beyond``
    seconds ahead (the line's watchdog) is moved a day away, so that a line only moves on
    the wake-ups given at once."""
    redis = sync_redis(stack.state_url)
    hold_off = redis.register_script(_HOLD_OFF)
    stop = threading.Event()

    def watch():
        while not stop.wait(0.02):
            hold_off(keys=[keys.throttled_of(account_id)],
                     args=[account_id, int(beyond * 1000), int(time.time() * 1000)])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(60)
        redis.close()


# --- admin API ------------------------------------------------------------------------------


def test_admin_api_manages_accounts_and_keys(stack):
    with stack.admin() as admin:
        r = admin.post("/v4/admin/accounts", json={"name": "acme", "limits": {"rpm": 100, "tpm": None}})
        assert r.status_code == 201
        account = r.json()
        no_budget = {"budget_usd": None, "budget_period": None}
        assert account["id"].startswith("acct_") and account["limits"] == {"rpm": 100, "tpm": None,
                                                                          "max_concurrency": None, **no_budget}
        assert admin.get(f"/v4/admin/accounts/{account['id']}").json() == account
        assert account["id"] in [a["id"] for a in admin.get("/v4/admin/accounts").json()["data"]]
        r = admin.patch(f"/v4/admin/accounts/{account['id']}", json={"limits": {"max_concurrency": 3}})
        assert r.json()["limits"] == {"rpm": 100, "tpm": None, "max_concurrency": 3, **no_budget}
        r = admin.patch(f"/v4/admin/accounts/{account['id']}", json={"limits": {"rpm": None}})
        assert r.json()["limits"]["rpm"] is None

        created = admin.post(f"/v4/admin/accounts/{account['id']}/api-keys").json()
        secret = created["key"]
        listed = admin.get(f"/v4/admin/accounts/{account['id']}/api-keys").json()["data"]
        assert [k["id"] for k in listed] == [created["id"]]
        assert secret not in str(listed)

    # Stored hashed: the secret appears nowhere in Redis.
    redis = sync_redis(stack.redis_url)
    for key in redis.scan_iter("chatfleet:*apikey*"):
        value = redis.hgetall(key) if redis.type(key) == "hash" else redis.get(key)
        assert secret not in str(value)

    with stack.client(secret) as client:
        assert client.post("/v4/jobs", json=FAST).status_code == 202
    with stack.admin() as admin:
        assert admin.delete(f"/v4/admin/api-keys/{created['id']}").status_code == 204
        assert admin.delete(f"/v4/admin/api-keys/{created['id']}").status_code == 404
    with stack.client(secret) as client:
        assert client.post("/v4/jobs", json=FAST).status_code == 401  # revoked at once


def test_admin_routes_need_the_admin_key(stack):
    with httpx.Client(base_url=stack.base_url) as anonymous, stack.client() as user:
        for client in (anonymous, user):
            assert client.get("/v4/admin/accounts").status_code == 401
            assert client.post("/v4/admin/accounts", json={"name": "x"}).status_code == 401
            assert client.get("/v4/admin/usage").status_code == 401
    with stack.admin() as admin:
        assert admin.get("/v4/admin/accounts/acct_missing").status_code == 404
        r = admin.post("/v4/admin/accounts", json={"name": "x", "limits": {"rpm": 0}})
        assert r.status_code == 422


# --- limits ---------------------------------------------------------------------------------


def test_limits_hold_across_four_worker_processes(own_stack):
    """Requests per window, measured from the admission times: never more than the limit in any
    window, however fast or slow the machine; every job admitted in the end; those that waited,
    in submission order."""
    window, limit, jobs = 3.0, 10, 60
    stack = own_stack(interactive=False, local_slots=1, fake_url=own_stack.fake_url,
                      CHATFLEET_RATE_WINDOW_SECONDS=str(window))
    for i in range(4):
        stack.start_worker(f"worker-{i}", [keys.QUEUE_INTERACTIVE], 20)
    wait_for(lambda: len(httpx.get(f"{stack.base_url}/readyz").json()["workers"].get(keys.QUEUE_INTERACTIVE, [])) == 4,
             interval=0.2, what="four workers")
    account, key = new_account(stack, rpm=limit)
    with stack.client(key) as client:
        ids = [client.post("/v4/jobs", json=FAST).json()["id"] for _ in range(jobs)]
        done = [poll_until_done(client, i, timeout=jobs / limit * window + 120) for i in ids]
        # The jobs that were made to wait (their stream starts with the wait).
        waited = {i for i in ids if first_event(client, i) == "throttled"}
    assert all(d["status"] == "succeeded" for d in done), [d["status"] for d in done]
    # Admission times in ms, as the admission script recorded them (the API shows milliseconds).
    admitted = sorted(round(ts(d["started_at"]) * 1000) for d in done)
    span = round(window * 1000)
    busiest = max(sum(1 for t in admitted if start <= t < start + span) for start in admitted)
    # Exactly the limit: never more, and the windows jobs waited for are filled, not left short
    # (ten submissions, one after the other, take far less than the 3 s window).
    assert busiest == limit, busiest
    # Jobs that had to wait were admitted in submission order (those admitted at once, by four
    # processes in parallel, in whatever order they reached admission).
    by_admission = [d["id"] for d in sorted(done, key=lambda d: ts(d["started_at"])) if d["id"] in waited]
    assert by_admission == [i for i in ids if i in waited]


def test_a_killed_workers_concurrency_slot_comes_back(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url)
    fake = own_stack.fake
    account, key = new_account(stack, max_concurrency=1)
    fake.config(tokens_per_s=1, tokens=40)  # ~40 s per job: still running when its worker is killed
    with stack.client(key) as client:
        slow = client.post("/v4/jobs", json={**FAST, "model_parameters": {"max_tokens": 40}}).json()
        with client.stream("GET", f"/v4/jobs/{slow['id']}/stream") as r:
            read_sse(r, limit=2)
        waiting = client.post("/v4/jobs", json=FAST).json()
        wait_for(lambda: client.get(f"/v4/jobs/{waiting['id']}").json()["status"] == "throttled",
                 what="the second job to wait for the slot")
        throttled = client.get(f"/v4/jobs/{waiting['id']}").json()
        assert throttled["next_try_at"] and "concurrency" in throttled["throttle_reason"]
        fake.config(tokens_per_s=0)
        stack.fleet.kill("worker-interactive")  # holds the account's only slot
        stack.start_worker("worker-interactive-2", [keys.QUEUE_INTERACTIVE], 20)
        first = poll_until_done(client, slow["id"], timeout=120)
        second = poll_until_done(client, waiting["id"], timeout=120)
    assert first["status"] == second["status"] == "succeeded", stack.logs()
    assert first["attempts"] == 2
    # The slot came back: nobody released it, the lease (3 s here) lapsed; both jobs ran, one
    # after the other.
    assert ts(second["started_at"]) >= ts(first["started_at"])


def test_throttled_job_waits_then_runs(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url, CHATFLEET_RATE_WINDOW_SECONDS="2")
    account, key = new_account(stack, rpm=1)
    with stack.client(key) as client:
        first = client.post("/v4/jobs", json=FAST).json()
        second = client.post("/v4/jobs", json=FAST)
        assert second.headers["x-ratelimit-limit-requests"] == "1"
        ids = [first["id"], second.json()["id"]]

        # Both reach admission at about the same time, in either order; one runs, one waits.
        def throttled() -> str | None:
            return next((i for i in ids if client.get(f"/v4/jobs/{i}").json()["status"] == "throttled"), None)

        waiting = wait_for(throttled, what="throttling")
        (admitted,) = [i for i in ids if i != waiting]
        with client.stream("GET", f"/v4/jobs/{waiting}/stream") as r:
            events = read_sse(r)
        done = poll_until_done(client, waiting)
        other = poll_until_done(client, admitted)
    assert done["status"] == other["status"] == "succeeded" and done["attempts"] == 1  # waiting is not a delivery
    assert events[0]["event"] == "throttled" and events[-1]["event"] == "end"
    assert ts(done["started_at"]) - ts(other["started_at"]) >= 2.0


def test_a_waiting_job_that_can_no_longer_run_passes_its_turn_at_once(own_stack):
    """The first job in an account's line fails at its next admission (its limits were
    lowered meanwhile): the job behind it is admitted right away, not at the line's 5 s
    watchdog. The watchdog is held off here: the small job can only be admitted if the failing
    one passed its turn on."""
    window = 3.0
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url, CHATFLEET_RATE_WINDOW_SECONDS=str(window))
    account, key = new_account(stack, rpm=1)
    # Wake-ups further away than the rate window's (at most a window ahead) are the watchdog's.
    with stack.client(key) as client, line_watchdog_held_off(stack, account, beyond=window + 0.5):
        first = client.post("/v4/jobs", json=FAST).json()
        poll_until_done(client, first["id"])
        big = client.post("/v4/jobs", json={**FAST, "model_parameters": {"max_tokens": 2000}}).json()
        wait_for(lambda: client.get(f"/v4/jobs/{big['id']}").json()["status"] == "throttled",
                 what="the big job to wait")
        small = client.post("/v4/jobs", json=FAST).json()
        wait_for(lambda: client.get(f"/v4/jobs/{small['id']}").json()["status"] == "throttled",
                 what="the small job to wait behind it")
        with stack.admin() as admin:
            r = admin.patch(f"/v4/admin/accounts/{account}", json={"limits": {"tpm": 500}})
            assert r.status_code == 200, r.text
        failed = poll_until_done(client, big["id"])
        done = poll_until_done(client, small["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "limit_exceeded", failed
    assert done["status"] == "succeeded", done
    assert ts(done["started_at"]) >= ts(failed["finished_at"])


def test_synchronous_request_over_the_limit_is_a_429(stack):
    account, key = new_account(stack, rpm=1)  # a 60 s window in the shared fleet
    with stack.client(key) as client:
        ok = client.post("/v4/chat-completions", json=FAST)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "1"
        assert ok.headers["x-ratelimit-remaining-requests"] == "0"
        r = client.post("/v4/chat-completions", json=FAST)
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 61
        assert "requests-per-window" in r.json()["detail"]
        job = client.get(f"/v4/jobs/{r.headers['x-chatfleet-job-id']}").json()
        assert job["status"] == "cancelled"  # nothing runs behind the client's back


def test_a_429_behind_waiting_jobs_says_when_the_request_could_really_go(stack):
    """Behind a job already waiting for the window, a request cannot go before that job has gone
    and the window has room again: two windows, not the second the account next wakes up."""
    account, key = new_account(stack, rpm=1)  # a 60 s window
    with stack.client(key) as client:
        assert client.post("/v4/chat-completions", json=FAST).status_code == 200
        queued = client.post("/v4/jobs", json=FAST).json()
        wait_for(lambda: client.get(f"/v4/jobs/{queued['id']}").json()["status"] == "throttled",
                 what="the queued job to wait for the window")
        r = client.post("/v4/chat-completions", json=FAST)
        client.post(f"/v4/jobs/{queued['id']}/cancel")
    assert r.status_code == 429 and "waiting behind 1 earlier job" in r.json()["detail"], r.text
    # The queued job goes when the first admission leaves the window (~60 s), this one a window later.
    assert 100 <= int(r.headers["Retry-After"]) <= 121, r.headers["Retry-After"]


def test_request_larger_than_the_token_limit_fails_clearly(stack):
    account, key = new_account(stack, tpm=50)
    with stack.client(key) as client:
        r = client.post("/v4/chat-completions", json={**FAST, "model_parameters": {"max_tokens": 500}})
    assert r.status_code == 400 and "tokens-per-window limit is 50" in r.json()["detail"]


# --- usage ----------------------------------------------------------------------------------


def test_usage_equals_what_clients_were_told_exactly(stack):
    account, key = new_account(stack)
    told = {"prompt": 0, "completion": 0, "requests": 0}
    with stack.client(key) as client:
        for n in (1, 2, 3, 5, 8):
            r = client.post("/v4/chat-completions", json={**FAST, "model_parameters": {"max_tokens": n}})
            usage = r.json()["token_usage"]
            told["prompt"] += usage["prompt"]
            told["completion"] += usage["completion"]
            told["requests"] += 1
        with client.stream("POST", "/v4/chat-completions", json={**FAST, "stream": True}) as r:
            import json as _json
            last = _json.loads(read_sse(r)[-1]["data"])["token_usage"]
        told["prompt"] += last["prompt"]
        told["completion"] += last["completion"]
        told["requests"] += 1
        (row,) = client.get("/v4/usage", params={"group_by": "model"}).json()["data"]
        csv_text = client.get("/v4/usage", params={"format": "csv"}).text
    assert row["model"] == "gpt-4o-mini"
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == \
        (told["requests"], told["prompt"], told["completion"])
    assert row["succeeded"] == told["requests"]
    expected_cost = (told["prompt"] * 0.15 + told["completion"] * 0.60) / 1e6
    assert row["cost_usd"] == pytest.approx(expected_cost, abs=1e-9)
    assert csv_text.splitlines()[0].startswith("day,model,") or "model" in csv_text.splitlines()[0]
    with stack.admin() as admin:
        everyone = admin.get("/v4/admin/usage", params={"account_id": account}).json()["data"]
    assert sum(r["requests"] for r in everyone) == told["requests"]


def test_redelivered_job_is_counted_once(stack, fake):
    account, key = new_account(stack)
    redis = sync_redis(stack.redis_url)
    with stack.client(key) as client:
        job = client.post("/v4/jobs", json=FAST).json()
        poll_until_done(client, job["id"])
        for _ in range(2):  # the broker hands the same job out twice more
            redis.lpush(keys.QUEUE_INTERACTIVE, run_job_message(job["id"], keys.QUEUE_INTERACTIVE))
        # Each delivery of the job traced by the worker (Celery logs the task's outcome): the
        # two redeliveries were handled, not merely taken off the queue.
        wait_for(lambda: sum(f"[{job['id']}] succeeded in" in line
                             for line in log_lines(stack, "worker-interactive")) == 3,
                 what="the worker to handle both redeliveries")
        (row,) = client.get("/v4/usage").json()["data"]
        again = client.get(f"/v4/jobs/{job['id']}").json()
    assert row["requests"] == 1 and row["completion_tokens"] == 3
    assert again["attempts"] == 1
    assert len(fake.requests()) == 1  # the provider was called once


def test_cancelled_job_records_what_it_consumed(stack, fake):
    account, key = new_account(stack)
    fake.config(tokens_per_s=20, tokens=200)
    with stack.client(key) as client:
        job = client.post("/v4/jobs", json={**FAST, "model_parameters": {"max_tokens": 200}}).json()
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            read_sse(r, limit=5)
        client.post(f"/v4/jobs/{job['id']}/cancel")
        done = poll_until_done(client, job["id"])
        (row,) = client.get("/v4/usage").json()["data"]
    assert done["status"] == "cancelled"
    assert done["usage"]["completion_tokens"] >= 5 and done["usage"]["estimated"] is True
    assert row["cancelled"] == 1 and row["completion_tokens"] == done["usage"]["completion_tokens"] > 0


def test_usage_of_another_account_is_not_found(stack):
    a, key_a = new_account(stack)
    b, key_b = new_account(stack)
    with stack.client(key_a) as client:
        client.post("/v4/chat-completions", json=FAST)
    with stack.client(key_b) as client:
        assert client.get("/v4/usage", params={"account_id": a}).status_code == 404
        assert client.get("/v4/usage").json()["data"] == []
    with stack.client(key_a) as client:
        assert client.get("/v4/usage", params={"account_id": a}).status_code == 200
        assert client.get("/v4/usage", params={"start": "2030-01-02", "end": "2030-01-01"}).status_code == 400


def test_provider_deployment_limit_holds_across_accounts(own_stack, tmp_path):
    """What the provider key allows is shared by every account that uses it."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text((Path(__file__).parents[1] / "data" / "test_catalog.toml").read_text()
                       + "\n[deployments.anthropic]\nrpm = 2\n")
    stack = own_stack(fake_url=own_stack.fake_url, CHATFLEET_CATALOG_PATH=str(catalog))
    _, key_a = new_account(stack)
    _, key_b = new_account(stack)
    body = {**FAST, "model": "claude-3-haiku-20240307"}
    with stack.client(key_a) as a, stack.client(key_b) as b:
        assert a.post("/v4/chat-completions", json=body).status_code == 200
        assert b.post("/v4/chat-completions", json=body).status_code == 200
        third = b.post("/v4/chat-completions", json=body)
        other_model = b.post("/v4/chat-completions", json=FAST)  # another deployment: unaffected
    assert third.status_code == 429
    assert "provider deployment requests-per-window limit (2)" in third.json()["detail"]
    assert other_model.status_code == 200
