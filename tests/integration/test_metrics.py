"""Prometheus metrics of the API and the workers, and the JSON logs, on a running fleet."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import keys
from tests.conftest import DEV_KEY
from tests.helpers import json_lines, log_lines, poll_until_done, read_sse, wait_for

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-2024-08-06"  # used by no other test: the deltas below are exact
LIMITED_MODEL = "gpt-4-0613"  # likewise, for the rate-limit counters
CANARY = "zanzibarquokka"  # message content: must show in no label and no log line
PROVIDER_KEYS = ("sk-test", "ak-test", "gk-test", "mk-test", "le-test", "secret-test")


def body(model: str = MODEL, max_tokens: int = 5, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": f"say {CANARY} three"}],
            "model_parameters": {"max_tokens": max_tokens}, **extra}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a metrics page: {(name, sorted label items): value}."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, items), v in samples.items() if n == name and want <= set(items))


def requests_moved(before: dict, after: dict, route: str, method: str, status: str) -> float:
    """API requests of this route, method and status between two scrapes."""
    labels = {"route": route, "method": method, "status": status}
    duration = "chatfleet_http_request_duration_seconds_count"
    return value(after, duration, **labels) - value(before, duration, **labels)


def has(samples: dict, name: str, **labels) -> bool:
    want = set(labels.items())
    return any(n == name and want <= set(items) for (n, items) in samples)


def worker_metrics_url(stack, name: str = "worker-interactive") -> str:
    def port():
        for line in json_lines(stack, name):
            if line.get("message", "").startswith("worker metrics served on port"):
                return line["port"]
        return None
    return f"http://127.0.0.1:{wait_for(port, interval=0.1, what=f'{name} to log its metrics port')}/metrics"


def test_routes_are_labelled_as_clients_call_them(stack, fake):
    """/v1 routes with their prefix (as the SSE gauge names them), the docs by their paths, and
    only a path no route serves as unmatched."""
    api_url = f"{stack.base_url}/metrics"
    before = scrape(api_url)
    with stack.client() as client:
        chat = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        assert client.get("/v1/files/file-nope").status_code == 404
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/no/such/route").status_code == 404
    after = scrape(api_url)

    def moved(route: str, method: str, status: str) -> float:
        return requests_moved(before, after, route, method, status)

    assert moved("/v1/chat/completions", "POST", "200") == 1
    assert moved("/v1/files/{file_id}", "GET", "404") == 1
    assert moved("/openapi.json", "GET", "200") == 1 and moved("/docs", "GET", "200") == 1
    assert moved("unmatched", "GET", "404") == 1
    assert moved("/chat/completions", "POST", "200") == 0


def test_api_and_worker_metrics_move_with_the_right_labels(stack, fake):
    api_url = f"{stack.base_url}/metrics"
    worker_url = worker_metrics_url(stack)
    api0, worker0 = scrape(api_url), scrape(worker_url)
    fake.script([{"status": 503}])  # the first call fails once, then is retried

    with stack.client() as client:
        r = client.post("/v4/jobs", json=body())
        assert r.status_code == 202
        job_id = r.json()["id"]
        done = poll_until_done(client, job_id)
        assert done["status"] == "succeeded", done
        with client.stream("GET", f"/v4/jobs/{job_id}/stream") as r:
            assert r.status_code == 200
            assert read_sse(r)[-1]["event"] == "end"
        assert client.get("/v4/jobs/job_doesnotexist").status_code == 404
        sync = client.post("/v4/chat-completions", json=body())
        assert sync.status_code == 200, sync.text
        with client.stream("POST", "/v4/chat-completions", json=body(stream=True)) as r:
            assert r.status_code == 200
            read_sse(r)
    with stack.client("cf-not-a-real-key-123") as stranger:
        assert stranger.get(f"/v4/jobs/{job_id}").status_code == 401

    # API: latency by route template and status (never the raw path), submissions, streams.
    api = scrape(api_url)

    def moved(route: str, method: str, status: str) -> float:
        return requests_moved(api0, api, route, method, status)

    assert moved("/v4/jobs", "POST", "202") == 1
    assert moved("/v4/jobs/{job_id}", "GET", "200") >= 1
    assert moved("/v4/jobs/{job_id}", "GET", "404") == 1
    assert moved("/v4/jobs/{job_id}", "GET", "401") == 1
    assert moved("/v4/jobs/{job_id}/stream", "GET", "200") == 1
    assert moved("/v4/chat-completions", "POST", "200") == 2
    assert value(api, "chatfleet_http_request_duration_seconds_bucket", route="/v4/chat-completions",
                 le="+Inf") >= 2
    routes = {dict(items).get("route") for (name, items) in api if name.startswith("chatfleet_http")}
    assert not any(job_id in r or "doesnotexist" in r for r in routes if r), routes
    assert (value(api, "chatfleet_jobs_submitted_total", model=MODEL)
            - value(api0, "chatfleet_jobs_submitted_total", model=MODEL)) == 3
    # Both SSE routes were counted, and are closed again.
    assert has(api, "chatfleet_sse_streams_active", route="/v4/jobs/{job_id}/stream")
    assert has(api, "chatfleet_sse_streams_active", route="/v4/chat-completions")
    wait_for(lambda: value(scrape(api_url), "chatfleet_sse_streams_active") == 0, interval=0.1,
             what="the SSE gauge to come back to 0")

    # Workers: finished jobs, tokens, provider calls, TTFT, errors, admissions, attempts.
    def worker_moved(name: str, **labels) -> float:
        return value(worker, name, **labels) - value(worker0, name, **labels)

    def settled():
        nonlocal worker
        worker = scrape(worker_url)
        return worker_moved("chatfleet_jobs_finished_total", model=MODEL) >= 3

    worker = worker0
    wait_for(settled, interval=0.2, what="the worker to count the three jobs")
    assert worker_moved("chatfleet_jobs_finished_total", status="succeeded", model=MODEL, provider="openai") == 3
    assert worker_moved("chatfleet_tokens_total", model=MODEL, provider="openai", direction="out") == 15
    assert worker_moved("chatfleet_tokens_total", model=MODEL, provider="openai", direction="in") == 9
    assert worker_moved("chatfleet_provider_errors_total", provider="openai", code="upstream_unavailable") == 1
    assert worker_moved("chatfleet_provider_call_duration_seconds_count", provider="openai", model=MODEL,
                        outcome="ok") == 3
    assert worker_moved("chatfleet_provider_call_duration_seconds_count", provider="openai", model=MODEL,
                        outcome="error") == 1
    assert worker_moved("chatfleet_provider_time_to_first_token_seconds_count", provider="openai",
                        model=MODEL) == 3
    assert worker_moved("chatfleet_ratelimit_admissions_total", model=MODEL) == 3
    assert worker_moved("chatfleet_job_attempt_duration_seconds_count", outcome="succeeded") >= 3
    for queue in (keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH, keys.QUEUE_LOCAL):
        assert has(worker, "chatfleet_queue_depth", queue=queue)
    assert has(worker, "chatfleet_throttled_jobs_waiting")
    assert has(worker, "chatfleet_jobs_running")
    assert has(worker, "process_resident_memory_bytes")

    # Nothing secret or private in any label: no content, no key, no job id.
    for samples in (api, worker):
        for name, items in samples:
            for _, label in items:
                for secret in (CANARY, DEV_KEY, job_id, *PROVIDER_KEYS):
                    assert secret not in label, (name, items)


def test_open_sse_streams_are_counted_until_they_end(stack, fake):
    """The gauge counts a stream while it is open, and a client that goes away ends it (and,
    for a streamed chat completion, still cancels its job)."""
    fake.script([{"tokens": 200, "tokens_per_s": 10, "times": 2}])
    url = f"{stack.base_url}/metrics"
    job_stream, chat_stream = "/v4/jobs/{job_id}/stream", "/v4/chat-completions"
    with stack.client() as client:
        job = client.post("/v4/jobs", json=body("gpt-4o-mini", 200)).json()
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    assert value(scrape(url), "chatfleet_sse_streams_active", route=job_stream) == 1
                    break
        with client.stream("POST", "/v4/chat-completions", json=body("gpt-4o-mini", 200, stream=True)) as r:
            chat_job = r.headers["x-chatfleet-job-id"]
            for line in r.iter_lines():
                if line.startswith("data:"):
                    assert value(scrape(url), "chatfleet_sse_streams_active", route=chat_stream) == 1
                    break
        wait_for(lambda: value(scrape(url), "chatfleet_sse_streams_active") == 0, interval=0.1,
                 what="the SSE gauge to come back to 0")
        assert poll_until_done(client, chat_job)["status"] == "cancelled"
        client.post(f"/v4/jobs/{job['id']}/cancel")


def test_rate_limit_admissions_and_rejections_by_reason(stack):
    with stack.admin() as admin:
        account = admin.post("/v4/admin/accounts", json={"name": "metrics", "limits": {"rpm": 1, "tpm": 60}}).json()
        key = admin.post(f"/v4/admin/accounts/{account['id']}/api-keys").json()["key"]
    worker_url = worker_metrics_url(stack)
    before = scrape(worker_url)
    with stack.client(key) as client:
        first = client.post("/v4/jobs", json=body(LIMITED_MODEL, 3)).json()
        assert poll_until_done(client, first["id"])["status"] == "succeeded"
        second = client.post("/v4/jobs", json=body(LIMITED_MODEL, 3)).json()  # over rpm: waits
        wait_for(lambda: client.get(f"/v4/jobs/{second['id']}").json()["status"] == "throttled", interval=0.05,
                 what="the second job to be throttled")
        huge = client.post("/v4/jobs", json=body(LIMITED_MODEL, 100)).json()  # can never fit tpm
        failed = poll_until_done(client, huge["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "limit_exceeded", failed
        third = client.post("/v4/jobs", json=body(LIMITED_MODEL, 3)).json()  # behind the second
        wait_for(lambda: client.get(f"/v4/jobs/{third['id']}").json()["status"] == "throttled", interval=0.05,
                 what="the third job to be throttled")

        def parked():
            samples = scrape(worker_url)
            return samples if value(samples, "chatfleet_throttled_jobs_waiting") >= 2 else None
        after = wait_for(parked, interval=0.2, what="the throttled-jobs gauge to count both waiting jobs")

        def moved(name: str, **labels) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("chatfleet_ratelimit_admissions_total", model=LIMITED_MODEL) == 1
        assert moved("chatfleet_ratelimit_rejections_total", model=LIMITED_MODEL, reason="requests") >= 1
        assert moved("chatfleet_ratelimit_rejections_total", model=LIMITED_MODEL, reason="too_large") == 1
        assert moved("chatfleet_ratelimit_rejections_total", model=LIMITED_MODEL, reason="order") >= 1
        assert moved("chatfleet_jobs_finished_total", status="failed", model=LIMITED_MODEL, provider="openai") == 1
        assert moved("chatfleet_job_attempt_duration_seconds_count", outcome="throttled") >= 2
        for job in (second, third):
            assert client.post(f"/v4/jobs/{job['id']}/cancel").status_code == 200
    for name, items in after:
        assert not any(key in label or account["id"] in label for _, label in items), (name, items)


def test_logs_are_json_with_job_context_and_no_content_or_keys(stack, fake):
    with stack.client() as client:
        job = client.post("/v4/jobs", json=body()).json()
        assert poll_until_done(client, job["id"])["status"] == "succeeded"
    with stack.client("cf-invalid-key-for-logs-42") as stranger:
        assert stranger.post("/v4/jobs", json=body()).status_code == 401

    # The API writes nothing but JSON lines (uvicorn's own lines included).
    api_lines = [line for line in log_lines(stack, "api") if line.strip()]
    assert api_lines
    parsed = [json.loads(line) for line in api_lines]
    assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any(p["logger"].startswith("uvicorn") for p in parsed)

    # The worker's lines about the job carry its context.
    def finished():
        return [line for line in json_lines(stack, "worker-interactive")
                if line.get("job_id") == job["id"] and line.get("message") == "job succeeded"]
    (line,) = wait_for(finished, interval=0.1, what="the worker's log line for the job")
    assert line["account_id"] == "dev" and line["model"] == MODEL and line["provider"] == "openai"
    assert line["attempt"] == 1 and line["logger"] == "worker.runner" and line["level"] == "INFO"
    started = [l for l in json_lines(stack, "worker-interactive")
               if l.get("job_id") == job["id"] and l.get("message") == "job started"]
    assert started and started[0]["provider"] == "openai" and started[0]["attempt"] == 1

    # No message content and no key anywhere in the fleet's logs.
    for name in ("api", "worker-interactive", "worker-local"):
        text = stack.fleet.logs[name].read_text(errors="replace")
        for secret in (CANARY, DEV_KEY, "cf-invalid-key-for-logs-42", *PROVIDER_KEYS):
            assert secret not in text, (name, secret)
        assert not re.search(r"\b(?:sk|cf)-(?!\*\*\*)[A-Za-z0-9_\-]{12,}", text), name


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on ``port`` at, from the kernel's table."""
    found = set()
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_worker_metrics_listen_on_loopback_like_the_api(stack):
    port = int(worker_metrics_url(stack).rsplit(":", 1)[1].split("/")[0])
    assert listening_addresses(port) == {"127.0.0.1"}
