"""The spine end to end: real Redis, real Celery workers, the real API over HTTP, the real model."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime

import httpx
import pytest
from scale_gp import SGPClient

from shared import keys
from shared.connections import sync_redis
from tests.conftest import DEV_KEY, OTHER_KEY
from tests.helpers import (
    LOCAL,
    LONG_JOB_DEADLINE,
    ask,
    content_of,
    iter_sse,
    log_lines,
    poll_until_done,
    read_sse,
    wait_for,
)

pytestmark = pytest.mark.integration

LONG = "smollm2-longrun"


# --- the original API through its official SDK ---------------------------------------------


def test_sdk_completion(stack):
    sdk = SGPClient(api_key=DEV_KEY, base_url=stack.base_url, max_retries=0)
    response = sdk.chat_completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        model_parameters={"max_tokens": 40, "temperature": 0},
    )
    assert response.chat_completion.message.role == "assistant"
    assert response.chat_completion.message.content.strip()  # a 135M model: any real text
    assert response.chat_completion.finish_reason in ("stop", "length")
    usage = response.token_usage
    assert usage.prompt > 0 and 0 < usage.completion <= 40
    assert usage.total == usage.prompt + usage.completion


def test_sdk_streaming(stack):
    sdk = SGPClient(api_key=DEV_KEY, base_url=stack.base_url, max_retries=0)
    chunks = list(sdk.chat_completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "Name three colours."}],
        model_parameters={"max_tokens": 30, "temperature": 0}, stream=True,
    ))
    assert len(chunks) >= 2
    deltas = [c.completions[0][1][0] for c in chunks]
    chat_deltas = [c.chat_completion["message"]["content"] for c in chunks]  # kept extra field
    assert deltas == chat_deltas
    text = "".join(deltas)
    assert text.strip()
    assert all(c.finish_reason is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.finish_reason in ("stop", "length")
    assert final.prompt_tokens > 0 and 0 < final.response_tokens <= 30
    assert final.token_usage["total"] == final.prompt_tokens + final.response_tokens

    # Same request, non-streaming and greedy: the same text.
    sync = SGPClient(api_key=DEV_KEY, base_url=stack.base_url, max_retries=0).chat_completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "Name three colours."}],
        model_parameters={"max_tokens": 30, "temperature": 0},
    )
    assert sync.chat_completion.message.content == text


def test_stream_has_no_done_sentinel_and_is_sse(stack):
    with stack.client() as client, client.stream(
        "POST", "/v4/chat-completions", json=ask(stream=True, model_parameters={"max_tokens": 5})
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    assert events and all(e["data"] != "[DONE]" for e in events)
    assert all(e["event"] is None for e in events)
    assert json.loads(events[-1]["data"])["token_usage"]["completion"] == 5


# --- jobs ---------------------------------------------------------------------------------


def test_job_submit_poll_result(stack):
    with stack.client() as client:
        r = client.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 12}))
        assert r.status_code == 202
        job = r.json()
        assert job["status"] == "queued" and job["id"].startswith("job_")
        assert r.headers["location"] == f"/v4/jobs/{job['id']}"
        done = poll_until_done(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    result = done["result"]
    assert result["chat_completion"]["message"]["content"]
    assert result["token_usage"]["completion"] <= 12
    assert done["error"] is None


def test_late_subscriber_gets_every_event_from_the_start(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 20})).json()
        done = poll_until_done(client, job["id"])
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            assert r.status_code == 200
            events = read_sse(r)
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"]) == {"status": "succeeded"}
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
    final = json.loads(events[-2]["data"])
    assert final["token_usage"] == done["result"]["token_usage"]


def test_last_event_id_resume_has_no_gap_and_no_duplicate(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json={**ask("Tell me a long story."), "model": LONG,
                                            "model_parameters": {"max_tokens": 120}}).json()
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            first = read_sse(r, limit=7)  # disconnect mid-job
        assert [int(e["id"]) for e in first] == list(range(1, 8))
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream",
                           headers={"Last-Event-ID": first[-1]["id"]}) as r:
            rest = read_sse(r)
        done = poll_until_done(client, job["id"], timeout=LONG_JOB_DEADLINE)
    ids = [int(e["id"]) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert content_of(first + rest) == done["result"]["chat_completion"]["message"]["content"]
    assert rest[-1]["event"] == "end"

    # The query parameter works too, for clients that cannot set headers (EventSource).
    with stack.client() as client, client.stream(
        "GET", f"/v4/jobs/{job['id']}/stream", params={"last_event_id": len(ids) - 2}
    ) as r:
        tail = read_sse(r)
    assert [int(e["id"]) for e in tail] == [len(ids) - 1, len(ids)]


def test_live_subscriber_sees_tokens_while_they_are_produced(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json={**ask("Count slowly."), "model": LONG,
                                            "model_parameters": {"max_tokens": 200}}).json()
        arrivals = []
        status_after_three = None
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            for e in iter_sse(r):
                arrivals.append((time.time(), e))
                if len(arrivals) == 3:  # 197 tokens still to come
                    status_after_three = client.get(f"/v4/jobs/{job['id']}").json()["status"]
        done = poll_until_done(client, job["id"], timeout=LONG_JOB_DEADLINE)
    events = [e for _, e in arrivals]
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
    # Tokens arrived while the job was still producing them, not all at once at its end: the
    # first one before the job finished (both times from this machine's clock).
    finished = datetime.fromisoformat(done["finished_at"].replace("Z", "+00:00")).timestamp()
    assert arrivals[0][0] < finished, (arrivals[0][0], done["finished_at"])
    # ... and while it was still running: a worker holding them back to its end fails this.
    assert status_after_three == "running", status_after_three


def test_cancel_running_job_stops_the_model(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json={**ask("Write an endless poem."), "model": LONG,
                                            "model_parameters": {"max_tokens": 3000}}).json()
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            read_sse(r, limit=5)  # it is producing tokens
        r = client.post(f"/v4/jobs/{job['id']}/cancel")
        assert r.status_code == 200
        # What the client can rely on: it is being stopped (a poll says so until it has).
        assert r.json()["status"] == "cancelling"
        seen = client.get(f"/v4/jobs/{job['id']}").json()["status"]
        assert seen in ("cancelling", "cancelled")
        done = poll_until_done(client, job["id"])
        assert done["status"] == "cancelled"
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            events = read_sse(r)
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"]) == {"status": "cancelled"}
    produced = len([e for e in events if e["event"] is None])
    # Abandoned, not run to the end: far fewer than the 3000 tokens asked for.
    assert produced < 1000, produced


def test_cancel_queued_job(stack):
    with stack.client() as client:
        # Occupy both local slots, then queue one more behind them.
        blockers = [client.post("/v4/jobs", json={**ask("Go on."), "model": LONG,
                                                  "model_parameters": {"max_tokens": 3000}}).json()
                    for _ in range(2)]
        wait_for(lambda: all(client.get(f"/v4/jobs/{b['id']}").json()["status"] == "running"
                             for b in blockers), what="blockers to run")
        queued = client.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 5})).json()
        # Its message waits on the broker's queue: the worker takes one per slot, and acks each
        # only once its job has ended.
        broker = sync_redis(stack.redis_url)
        try:
            wait_for(lambda: any(queued["id"] in m for m in broker.lrange(keys.QUEUE_LOCAL, 0, -1)),
                     what="the job's message on the queue")
        finally:
            broker.close()
        assert client.get(f"/v4/jobs/{queued['id']}").json()["status"] == "queued"
        r = client.post(f"/v4/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        for b in blockers:
            client.post(f"/v4/jobs/{b['id']}/cancel")
        for b in blockers:
            assert poll_until_done(client, b["id"])["status"] == "cancelled"
        # When its message is finally delivered (the worker traced its task: Celery logs it),
        # the cancelled job does not run.
        wait_for(lambda: any(f"[{queued['id']}] succeeded in" in line for line in log_lines(stack, "worker-local")),
                 what="the worker to take the cancelled job's message")
        final = client.get(f"/v4/jobs/{queued['id']}").json()
        assert final["status"] == "cancelled" and final["attempts"] == 0 and final["result"] is None
        with client.stream("GET", f"/v4/jobs/{queued['id']}/stream") as r:
            events = read_sse(r)
        assert [e["event"] for e in events] == ["end"]
        # Cancelling a finished job changes nothing.
        again = client.post(f"/v4/jobs/{queued['id']}/cancel").json()
        assert again["status"] == "cancelled"


def test_sync_client_disconnect_cancels_its_job(stack):
    with stack.client() as client:
        with client.stream("POST", "/v4/chat-completions",
                           json={**ask("Ramble."), "model": LONG, "stream": True,
                                 "model_parameters": {"max_tokens": 3000}}) as r:
            job_id = r.headers["x-chatfleet-job-id"]
            read_sse(r, limit=3)
        assert poll_until_done(client, job_id)["status"] == "cancelled"


# --- auth, isolation, errors ----------------------------------------------------------------


def test_missing_or_wrong_key_is_401(stack):
    with httpx.Client(base_url=stack.base_url) as client:
        r = client.post("/v4/chat-completions", json=ask())
        assert r.status_code == 401 and "x-api-key" in r.json()["detail"]
        r = client.post("/v4/jobs", json=ask(), headers={"x-api-key": "nope"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
        assert client.get("/v4/jobs/job_x", headers={"x-api-key": "nope"}).status_code == 401


def test_other_accounts_jobs_are_not_found(stack):
    with stack.client() as mine, stack.client(OTHER_KEY) as theirs:
        job = mine.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 3})).json()
        for method, path in (("GET", f"/v4/jobs/{job['id']}"), ("GET", f"/v4/jobs/{job['id']}/stream"),
                             ("POST", f"/v4/jobs/{job['id']}/cancel")):
            r = theirs.request(method, path)
            missing = theirs.request(method, path.replace(job["id"], "job_missing"))
            assert r.status_code == missing.status_code == 404, (method, path)
            # Indistinguishable from a job that does not exist.
            assert r.json()["detail"].replace(job["id"], "X") == missing.json()["detail"].replace("job_missing", "X")
        assert poll_until_done(mine, job["id"])["status"] == "succeeded"


def test_key_cannot_select_another_account(stack):
    with stack.client(headers={"x-selected-account-id": "other"}) as client:
        assert client.post("/v4/jobs", json=ask()).status_code == 403
    with stack.client() as client:
        assert client.post("/v4/jobs", json=ask(account_id="other")).status_code == 403
        assert client.post("/v4/jobs", json=ask(account_id="dev", model_parameters={"max_tokens": 2})
                           ).status_code == 202


@pytest.mark.parametrize("body, status, needle", [
    ({"model": LOCAL, "messages": []}, 422, "at least 1"),
    ({"model": LOCAL}, 422, "messages"),
    ({"model": "no-such-model", "messages": [{"content": "hi"}]}, 400, "GET /v4/models"),
    ({"model": LOCAL, "messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
    ({**ask(), "model_parameters": {"temperature": 1.5}}, 422, "temperature"),
    ({**ask(), "model_parameters": {"stop_sequences": ["a", "b", "c", "d", "e"]}}, 422, "stop_sequences"),
    ({**ask(), "instructions": "be brief", "messages": [{"role": "system", "content": "x"},
                                                        {"content": "hi"}]}, 400, "instructions"),
    ({**ask(), "chat_template": "{% for m in messages %}{{ m.content "}, 400, "syntax error"),
])
def test_bad_input_is_a_clear_4xx(stack, body, status, needle):
    with stack.client() as client:
        r = client.post("/v4/jobs", json=body)
    assert r.status_code == status
    assert needle in json.dumps(r.json())


def test_malformed_json_and_bad_last_event_id(stack):
    with stack.client() as client:
        r = client.post("/v4/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        job = client.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 2})).json()
        r = client.get(f"/v4/jobs/{job['id']}/stream", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]


def test_many_concurrent_subscribers_see_the_same_stream(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json={**ask("Tell me about the sea."), "model": LONG,
                                            "model_parameters": {"max_tokens": 60}}).json()
    results: list[list[dict]] = []

    def subscribe():
        with stack.client() as c, c.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            results.append(read_sse(r))

    threads = [threading.Thread(target=subscribe) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    first = results[0]
    assert all([e["id"] for e in r] == [e["id"] for e in first] for r in results)
    assert all(content_of(r) == content_of(first) for r in results)


# --- readiness ------------------------------------------------------------------------------


def test_readyz_reports_workers_and_healthz(stack):
    with httpx.Client(base_url=stack.base_url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["redis"] == "ok"
    assert "chatfleet.local" in body["workers"] and "chatfleet.interactive" in body["workers"]


def test_job_longer_than_its_lease_keeps_running_on_one_attempt(stack, fake):
    # The test stack's lease is 3 s; the fake provider spreads these 40 tokens over 7.8 s,
    # however fast or slow the machine (the local model's pace depends on it).
    fake.script([{"tokens_per_s": 5, "tokens": 40}])
    with stack.client() as client:
        job = client.post("/v4/jobs", json={**ask("Describe the sky."), "model": "gpt-4o-mini",
                                            "model_parameters": {"max_tokens": 40}}).json()
        done = poll_until_done(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"]["token_usage"]["completion"] == 40
    ran = (datetime.fromisoformat(done["finished_at"].replace("Z", "+00:00"))
           - datetime.fromisoformat(done["started_at"].replace("Z", "+00:00"))).total_seconds()
    assert ran > 2 * 3, ran  # it did outlive its lease, twice over


def test_resume_after_the_end_is_204_and_out_of_range_ids_are_400(stack):
    with stack.client() as client:
        job = client.post("/v4/jobs", json=ask(model_parameters={"max_tokens": 3})).json()
        poll_until_done(client, job["id"])
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            last = read_sse(r)[-1]["id"]
        # An EventSource reconnecting after the end gets 204 and stops, instead of hanging.
        r = client.get(f"/v4/jobs/{job['id']}/stream", headers={"Last-Event-ID": last})
        assert r.status_code == 204
        r = client.get(f"/v4/jobs/{job['id']}/stream", headers={"Last-Event-ID": str(2**64)})
        assert r.status_code == 400


def test_lone_surrogate_is_a_422_not_a_500(stack):
    with stack.client() as client:
        r = client.post("/v4/jobs",
                        content=b'{"model": "smollm2-135m-instruct", "messages": [{"content": "x \\ud800"}]}',
                        headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.text


def test_the_api_docs_work_offline_from_vendored_assets(stack):
    """/docs and /redoc load their scripts and styles from this API, never from a CDN."""
    with httpx.Client(base_url=stack.base_url) as http:
        for page in ("/docs", "/redoc"):
            html = http.get(page)
            assert html.status_code == 200 and "text/html" in html.headers["content-type"], page
            assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
            assert assets and all(a.startswith("/static/vendor/") or a == "/openapi.json" for a in assets), assets
            for asset in assets:
                got = http.get(asset)
                assert got.status_code == 200 and len(got.content) > 100, (asset, got.status_code)
        assert http.get("/docs/oauth2-redirect").status_code == 200
        assert http.get("/openapi.json").json()["info"]["title"] == "chatfleet"
