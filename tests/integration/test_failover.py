"""Failover: a model's deployments share its calls, a failing one is left for the next at once and
cools down fleet-wide, an account's fallback models come after them, and a stream that delivered
tokens never switches (worker/failover.py)."""

from __future__ import annotations

import pytest

from shared import keys
from shared.connections import sync_redis
from tests.helpers import json_lines, poll_until_done
from worker.providers.openai import job_seed

pytestmark = pytest.mark.integration

Q = [{"role": "user", "content": "four words go here"}]


def submit(client, model: str, n: int = 1, max_tokens: int = 3, **extra) -> list[str]:
    return [client.post("/v4/jobs", json={"model": model, "messages": Q, "model_parameters": {"max_tokens": max_tokens},
                                          **extra}).json()["id"] for _ in range(n)]


def calls_of(fake, job_id: str) -> list[tuple[str, int | str]]:
    """(family, status) of each call the fake provider got for the job, in order (the OpenAI and
    Mistral adapters send a seed drawn from the job's id)."""
    seed = job_seed(job_id)
    return [(r["family"], r["status"]) for r in fake.requests()
            if seed in (r["body"].get("seed"), r["body"].get("random_seed"))]


def worker_messages(stack, job_id: str) -> list[str]:
    return [line["message"] for name in list(stack.fleet.logs) if name.startswith("worker")
            for line in json_lines(stack, name) if line.get("job_id") == job_id]


def clear_health(stack, *deployments: str) -> None:
    redis = sync_redis(stack.redis_url)
    for name in deployments:
        redis.delete(keys.deployment_cooldown(name), *redis.keys(keys.deployment_health(name, "*")))
    redis.close()


def test_calls_are_spread_across_a_models_deployments(stack, fake):
    with stack.client() as client:
        ids = submit(client, "gpt-4o-balanced", n=30)
        jobs = [poll_until_done(client, job_id) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    served = {j["served_by"] for j in jobs}
    assert served == {"gpt-4o-balanced@balanced-openai", "gpt-4o-balanced@balanced-mistral"}
    families = [r["family"] for r in fake.requests()]
    assert families.count("openai") >= 5 and families.count("mistral") >= 5, families


def test_a_failing_deployment_is_left_at_once_then_cools_down_for_every_worker(stack, fake):
    clear_health(stack, "failover-openai", "failover-mistral")
    fake.script([{"status": 503}] * 20, family="openai")
    with stack.client() as client:
        (job_id,) = submit(client, "gpt-4o-failover")
        job = poll_until_done(client, job_id)
        assert job["status"] == "succeeded" and job["served_by"] == "gpt-4o-failover@failover-mistral"
        assert job["result"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2"
        # Moved on at once: one call to the failing deployment, the next to the other one, in the
        # same attempt, without a retry where it failed nor a backoff before moving.
        assert job["attempts"] == 1
        assert calls_of(fake, job_id) == [("openai", 503), ("mistral", 200)], calls_of(fake, job_id)
        messages = worker_messages(stack, job_id)
        assert any(m.startswith("provider call failed on gpt-4o-failover@failover-openai, moving to "
                                "gpt-4o-failover@failover-mistral") for m in messages), messages
        assert not any("retrying in" in m for m in messages), messages
        # Four more such failures: 5 calls, all failed: the deployment cools down, fleet-wide.
        for job_id in submit(client, "gpt-4o-failover", n=4):
            assert poll_until_done(client, job_id)["status"] == "succeeded"
        redis = sync_redis(stack.redis_url)
        assert redis.exists(keys.deployment_cooldown("failover-openai"))
        assert 0 < redis.ttl(keys.deployment_cooldown("failover-openai")) <= 30
        redis.close()
        openai_calls = len(fake.requests(family="openai"))
        for job_id in submit(client, "gpt-4o-failover", n=5):
            assert poll_until_done(client, job_id)["served_by"] == "gpt-4o-failover@failover-mistral"
    assert len(fake.requests(family="openai")) == openai_calls  # while it cools down, it is not called
    clear_health(stack, "failover-openai")


def test_a_stream_that_delivered_tokens_never_switches(stack, fake):
    clear_health(stack, "failover-openai", "failover-mistral")
    fake.script([{"cut_after": 2}], family="openai")
    with stack.client() as client:
        (job_id,) = submit(client, "gpt-4o-failover", max_tokens=6)
        job = poll_until_done(client, job_id)
    assert job["status"] == "succeeded" and job["served_by"] == "gpt-4o-failover@failover-openai"
    assert job["result"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert fake.requests(family="mistral") == []  # the retry went where the tokens came from


def test_an_account_falls_back_on_the_models_it_names(stack, fake):
    with stack.admin() as admin:
        refused = admin.post("/v4/admin/accounts", json={"name": "fb", "fallback_models": {"gpt-4o-mini": ["nope"]}})
        assert refused.status_code == 400 and "nope" in refused.text
        account = admin.post("/v4/admin/accounts", json={
            "name": "fallbacks", "fallback_models": {"gpt-4o-mini": ["claude-3-haiku-20240307"]}}).json()
        assert account["fallback_models"] == {"gpt-4o-mini": ["claude-3-haiku-20240307"]}
        key = admin.post(f"/v4/admin/accounts/{account['id']}/api-keys").json()["key"]
    fake.script([{"status": 429, "retry_after": 30}], family="openai")
    with stack.client(key) as client:
        (job_id,) = submit(client, "gpt-4o-mini")
        job = poll_until_done(client, job_id)
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()["data"]
    assert job["status"] == "succeeded" and job["served_by"] == "claude-3-haiku-20240307@anthropic"
    assert len(fake.requests(family="anthropic")) == 1
    # Billed at the price of the model that answered, under the model asked for.
    (row,) = usage
    assert row["model"] == "gpt-4o-mini" and row["cost_usd"] > 0
