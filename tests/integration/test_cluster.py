"""The state store on a Redis Cluster of three masters (started here, on loopback), the broker a
Redis of its own: jobs, streams, limits, cancels, batches, files and usage work as on one Redis;
the fleet's keys spread over every master; a worker killed mid-job loses nothing."""

from __future__ import annotations

import pytest
import redis

from shared import keys
from shared.connections import cluster_nodes
from tests.helpers import (
    FAST,
    ask,
    assert_a_worker_killed_mid_job_loses_nothing,
    content_of,
    line,
    new_account,
    poll_until_done,
    read_sse,
    results,
    wait_batch,
)

pytestmark = pytest.mark.integration


def test_the_fleet_runs_on_a_redis_cluster(own_stack):
    stack = own_stack(fake_url=own_stack.fake_url, state_cluster=True, CHATFLEET_RATE_WINDOW_SECONDS="2")
    assert stack.state_url.startswith("redis+cluster://")
    with stack.client() as client:
        sync = client.post("/v4/chat-completions", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 4}))
        assert sync.status_code == 200, sync.text + stack.logs()
        assert sync.json()["chat_completion"]["message"]["content"] == "tok0 tok1 tok2 tok3"
        jobs = [client.post("/v4/jobs", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 5})).json()
                for _ in range(20)]  # over many shards, and so over every master
        for job in jobs:
            done = poll_until_done(client, job["id"])
            assert done["status"] == "succeeded" and done["attempts"] == 1
        with client.stream("GET", f"/v4/jobs/{jobs[0]['id']}/stream") as r:
            events = read_sse(r)
        assert content_of(events) == "tok0 tok1 tok2 tok3 tok4"
        with client.stream("POST", "/v4/chat-completions",
                           json=ask(model="gpt-4o-mini", stream=True, model_parameters={"max_tokens": 3})) as r:
            assert content_of(read_sse(r)) == "tok0 tok1 tok2"  # live, through the hub's node
        batch = client.post("/v4/batches", json={"requests": [line(f"c{i}") for i in range(5)]}).json()
        assert wait_batch(client, batch["id"])["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
        assert sorted(r["custom_id"] for r in results(client, batch["id"])) == [f"c{i}" for i in range(5)]
        upload = client.post("/v1/files", files={"file": ("a.jsonl", b'{"x": 1}\n')}, data={"purpose": "batch"})
        assert upload.status_code == 200, upload.text
        assert client.get(f"/v1/files/{upload.json()['id']}/content").content == b'{"x": 1}\n'
        assert client.delete(f"/v1/files/{upload.json()['id']}").json()["deleted"] is True
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()
        assert {row["model"]: row["requests"] for row in usage["data"]} == {"gpt-4o-mini": 27}, usage

    # An account's limits hold: 2 requests per 2 s, the third waits its turn, in order.
    account_id, key = new_account(stack, rpm=2)
    with stack.client(key) as client:
        ids = [client.post("/v4/jobs", json=FAST).json()["id"] for _ in range(3)]
        done = [poll_until_done(client, job_id) for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 3
    assert done[2]["started_at"] >= done[0]["started_at"]
    with stack.admin() as admin:
        assert admin.post(f"/v4/admin/accounts/{account_id}/api-keys").status_code == 201

    # A queued job cancelled at once (no worker takes it: the fake holds every call).
    own_stack.fake.script([{"tokens_per_s": 2}] * 30)
    with stack.client() as client:
        slow = [client.post("/v4/jobs", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 50})).json()
                for _ in range(2)]
        r = client.post(f"/v4/jobs/{slow[1]['id']}/cancel")
        assert r.status_code in (200, 202), r.text
        assert poll_until_done(client, slow[1]["id"])["status"] == "cancelled"

    nodes = [redis.Redis(host=h, port=p, decode_responses=True) for h, p in cluster_nodes(stack.state_url)]
    try:
        held = [sum(1 for k in n.scan_iter(match=f"{keys.PREFIX}:*", count=1000)) for n in nodes]
        assert all(n > 0 for n in held), held  # the keyspace spreads over every master
    finally:
        for n in nodes:
            n.close()


def test_a_worker_killed_mid_job_loses_nothing_on_a_redis_cluster(own_stack):
    assert_a_worker_killed_mid_job_loses_nothing(own_stack(interactive=False, state_cluster=True))
