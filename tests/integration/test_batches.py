"""Batches end to end through the real stack with the fake provider."""

from __future__ import annotations

import json

import orjson
import pytest

from shared import keys
from tests.conftest import OTHER_KEY
from tests.helpers import LOCAL, ask, line, read_sse, results, wait_batch, wait_for

pytestmark = pytest.mark.integration


def jsonl(lines: list) -> bytes:
    return b"\n".join(l if isinstance(l, bytes) else orjson.dumps(l) for l in lines) + b"\n"


def test_json_batch_runs_every_line_and_translates_openai_lines(stack, fake):
    openai_line = {"custom_id": "oa", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}],
                            "max_tokens": 2, "stop": "never"}}
    with stack.client() as client:
        r = client.post("/v4/batches", json={"requests": [line(f"c{i}", i + 1) for i in range(4)] + [openai_line],
                                             "metadata": {"team": "search"}})
        assert r.status_code == 201, r.text
        batch = r.json()
        assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 5
        assert batch["metadata"] == {"team": "search"}
        done = wait_batch(client, batch["id"])
        got = {r["custom_id"]: r for r in results(client, batch["id"])}
        assert results(client, batch["id"], "errors") == []
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert done["completed_at"] and done["in_progress_at"] and done["finalizing_at"]
    assert set(got) == {"c0", "c1", "c2", "c3", "oa"}
    assert got["c2"]["response"]["body"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2"
    assert got["oa"]["response"]["status_code"] == 200 and got["oa"]["error"] is None
    assert got["oa"]["response"]["body"]["token_usage"]["completion"] == 2
    sent = [r["body"] for r in fake.requests()]
    assert any(b.get("stop") == ["never"] and b.get("max_tokens") == 2 for b in sent)


def test_invalid_lines_refuse_the_whole_batch_with_every_reason(stack, fake):
    bad = [
        orjson.dumps(line("a")),
        b"{not json",
        orjson.dumps({"method": "POST", "url": "/v4/chat-completions", "body": line("x")["body"]}),
        orjson.dumps(line("a")),  # duplicate custom_id
        orjson.dumps(line("b", model="no-such-model")),
        orjson.dumps({**line("c"), "url": "/v2/elsewhere"}),
        orjson.dumps(line("d", stream=True)),
        # OpenAI's temperature scale goes to 2, Anthropic's models stop at 1
        orjson.dumps({"custom_id": "e", "url": "/v1/chat/completions",
                      "body": {"model": "claude-3-haiku-20240307", "messages": [{"role": "user", "content": "x"}],
                               "temperature": 1.7}}),
    ]
    with stack.client() as client:
        r = client.post("/v4/batches", files={"file": ("batch.jsonl", jsonl(bad), "application/jsonl")})
    assert r.status_code == 201
    batch = r.json()
    assert batch["status"] == "failed" and batch["failed_at"]
    # Nothing ran, so every line failed: the counts add up.
    assert batch["request_counts"] == {"total": len(bad), "completed": 0, "failed": len(bad)}
    errors = {e["line"]: e["message"] for e in batch["errors"]["data"]}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    assert "not valid JSON" in errors[2]
    assert "custom_id is required" in errors[3]
    assert "unique" in errors[4]
    assert "no-such-model" in errors[5]
    assert "url must be" in errors[6]
    assert "stream" in errors[7]
    assert "temperature" in errors[8]
    # Nothing ran: a batch sent after it runs to its end (the feeder had its passes over the
    # active batches meanwhile), and only its own line reached the provider.
    with stack.client() as client:
        after = client.post("/v4/batches", json={"requests": [line("after")]}).json()
        assert wait_batch(client, after["id"])["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
        assert client.get(f"/v4/batches/{batch['id']}").json()["request_counts"]["completed"] == 0
    sent = [json.dumps(r["body"]) for r in fake.requests()]
    assert len(sent) == 1 and "question after" in sent[0], sent


def test_failed_lines_are_reported_and_the_rest_complete(stack, fake):
    fake.script([{"status": 400, "message": "no such thing"}], path="*/chat/completions")
    with stack.client() as client:
        batch = client.post("/v4/batches", json={"requests": [line(f"l{i}") for i in range(6)]}).json()
        done = wait_batch(client, batch["id"])
        ok, failed = results(client, batch["id"]), results(client, batch["id"], "errors")
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert len(ok) == 5 and len(failed) == 1
    assert failed[0]["error"]["code"] == "upstream_rejected" and failed[0]["response"] is None
    assert {r["custom_id"] for r in ok + failed} == {f"l{i}" for i in range(6)}


def test_cancel_a_running_batch_keeps_partial_results(stack, fake):
    fake.config(tokens_per_s=10, tokens=200)
    with stack.client() as client:
        # All 40 lines run at once: two short ones finish first, the rest (20 s each) are still
        # running when the cancel arrives, and stop.
        requests = [line(f"s{i}", 2 if i < 2 else 200) for i in range(40)]
        batch = client.post("/v4/batches", json={"requests": requests}).json()
        wait_for(lambda: client.get(f"/v4/batches/{batch['id']}").json()["request_counts"]["completed"] >= 1,
                 what="a first line to finish")
        r = client.post(f"/v4/batches/{batch['id']}/cancel")
        assert r.json()["status"] == "cancelling" and r.json()["cancelling_at"]
        done = wait_batch(client, batch["id"], 60)
        ok, failed = results(client, batch["id"]), results(client, batch["id"], "errors")
    assert done["status"] == "cancelled" and done["cancelled_at"]
    counts = done["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"] == 40
    assert len(ok) == counts["completed"] >= 1 and len(failed) == counts["failed"] >= 1
    assert {e["error"]["code"] for e in failed} == {"batch_cancelled"}
    assert len({r["custom_id"] for r in ok + failed}) == 40


def test_unfinished_lines_expire_with_the_window(stack, fake):
    fake.config(tokens_per_s=2, tokens=10)
    with stack.client() as client:
        batch = client.post("/v4/batches", json={"requests": [line(f"e{i}", 10) for i in range(5)],
                                                 "completion_window": "2s"}).json()
        done = wait_batch(client, batch["id"], 60)
        failed = results(client, batch["id"], "errors")
    assert done["status"] == "expired" and done["expired_at"]
    assert done["request_counts"]["failed"] == 5 == len(failed)
    assert {e["error"]["code"] for e in failed} == {"batch_expired"}


def test_progress_stream_and_listing(stack):
    with stack.client() as client:
        batch = client.post("/v4/batches", json={"requests": [line(f"p{i}") for i in range(3)]}).json()
        with client.stream("GET", f"/v4/batches/{batch['id']}/stream") as r:
            events = read_sse(r)
        page = client.get("/v4/batches", params={"limit": 1}).json()
        assert page["data"][0]["id"] == batch["id"] and page["has_more"] in (True, False)
        if page["has_more"]:
            nxt = client.get("/v4/batches", params={"limit": 1, "after": page["last_id"]}).json()
            assert nxt["data"][0]["id"] != batch["id"]
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"])["request_counts"]["completed"] == 3
    assert all(e["event"] in ("progress", "end") for e in events)


def test_batches_are_private_to_their_account(stack):
    with stack.client() as mine, stack.client(OTHER_KEY) as theirs:
        batch = mine.post("/v4/batches", json={"requests": [line("z")]}).json()
        for method, path in (("GET", ""), ("GET", "/results"), ("GET", "/errors"), ("GET", "/stream"),
                             ("POST", "/cancel")):
            assert theirs.request(method, f"/v4/batches/{batch['id']}{path}").status_code == 404
        assert batch["id"] not in [b["id"] for b in theirs.get("/v4/batches").json()["data"]]
        wait_batch(mine, batch["id"])


def test_ten_thousand_lines_all_accounted_for_through_a_worker_kill(own_stack):
    stack = own_stack(interactive=True, fake_url=own_stack.fake_url, CHATFLEET_BATCH_MAX_IN_FLIGHT="300")
    n = 10_000
    body = jsonl([line(f"k{i}", 2) for i in range(n)])
    with stack.client() as client:
        r = client.post("/v4/batches", files={"file": ("big.jsonl", body, "application/jsonl")}, timeout=300)
        assert r.status_code == 201 and r.json()["status"] == "in_progress", r.text[:500]
        batch = r.json()
        wait_for(lambda: client.get(f"/v4/batches/{batch['id']}").json()["request_counts"]["completed"] > 500,
                 120, 0.5, "the batch to get going")
        stack.fleet.kill("worker-interactive")
        stack.start_worker("worker-interactive-2", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], 100)
        done = wait_batch(client, batch["id"], 600)
        ok, failed = results(client, batch["id"]), results(client, batch["id"], "errors")
    counts = done["request_counts"]
    assert done["status"] == "completed", done
    assert counts["total"] == n and counts["completed"] + counts["failed"] == n
    ids = [r["custom_id"] for r in ok + failed]
    assert len(ids) == n and set(ids) == {f"k{i}" for i in range(n)}  # exactly one line each


def test_the_local_models_batch_lines_leave_a_slot_to_interactive_requests(stack):
    """Batch lines of the local model share its queue with interactive jobs: they are handed out
    within the fleet's local slots less one (two here), so an interactive request goes at once
    rather than after the lines queued before it."""
    import redis as redis_sync

    lines = [line(f"l{i}", 24, model=LOCAL) for i in range(8)]
    with stack.client() as client:
        batch = client.post("/v4/batches", json={"requests": lines}).json()
        wait_for(lambda: client.get(f"/v4/batches/{batch['id']}").json()["request_counts"]["completed"] >= 1,
                 what="the batch to be running")
        sync = client.post("/v4/chat-completions", json=ask(model_parameters={"max_tokens": 8}))
        counts = client.get(f"/v4/batches/{batch['id']}").json()["request_counts"]
        assert sync.status_code == 200, sync.text
        # Before, the request waited behind the six lines queued ahead of it.
        assert counts["completed"] <= 5, counts
        done = wait_batch(client, batch["id"])
    assert done["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
    state = redis_sync.Redis.from_url(stack.state_url or stack.redis_url)
    in_flight = [state.get(keys.batch_local_in_flight(shard)) for shard in range(keys.SHARDS)]
    assert sum(int(n or 0) for n in in_flight) == 0  # each finished line gave its place back
