"""Inputs meant to hurt: bounded before they are read, never echoed back at length."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import DEV_KEY

pytestmark = pytest.mark.integration

LIMIT = 16 * 1024 * 1024  # CHATFLEET_MAX_BODY_BYTES's default


def test_a_body_over_the_limit_is_a_413_before_it_is_read(stack):
    huge = b'{"model": "gpt-4o-mini", "messages": [{"content": "' + b"x" * (LIMIT + 10) + b'"}]}'
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": DEV_KEY}, timeout=60) as http:
        declared = http.post("/v4/chat-completions", content=huge, headers={"content-type": "application/json"})
        chunked = http.post("/v4/chat-completions", content=(huge[i:i + 65536] for i in range(0, len(huge), 65536)),
                            headers={"content-type": "application/json"})
        openai_door = http.post("/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
    for r in (declared, chunked):
        assert r.status_code == 413, r.text[:200]
        assert str(LIMIT) in r.json()["detail"]
    assert openai_door.status_code == 413 and openai_door.json()["error"]["code"] == "request_too_large"


def test_a_validation_error_quotes_only_an_excerpt_of_the_input(stack):
    stops = ["s" * (2 * 1024 * 1024)]  # five stop sequences of 2 MB: one too many, and 10 MB in all
    body = {"model": "gpt-4o-mini", "messages": [{"content": "hi"}],
            "model_parameters": {"stop_sequences": stops * 5}}
    with stack.client() as client:
        r = client.post("/v4/chat-completions", json=body)
    assert r.status_code == 422
    assert len(r.content) < 4096, len(r.content)
    assert "stop_sequences" in r.text and "characters)" in r.text


def test_an_upstreams_text_never_reaches_the_client(stack, fake):
    """An upstream error quoting the fleet's own key and an internal host: the client gets the
    status, a code and the fleet's words, in the sync answer, the job and the stream alike."""
    text = "invalid request from key sk-test at redis-internal.corp.example:6380"
    body = {"model": "gpt-4o-mini", "messages": [{"content": "hi"}], "model_parameters": {"max_tokens": 3}}
    fake.script([{"status": 400, "message": text}])
    with stack.client() as client:
        sync = client.post("/v4/chat-completions", json=body)
        job = client.get(f"/v4/jobs/{sync.headers['x-chatfleet-job-id']}").json()
        fake.script([{"status": 400, "message": text}], family="anthropic")
        with client.stream("POST", "/v4/chat-completions",
                           json={**body, "model": "claude-3-haiku-20240307", "stream": True}) as r:
            streamed = r.read().decode()
    assert sync.status_code == 400 and sync.json()["code"] == "upstream_rejected"
    for seen in (sync.text, str(job["error"]), streamed):
        assert "sk-test" not in seen and "corp.example" not in seen and "invalid request from" not in seen
    assert "event: error" in streamed and "HTTP 400" in streamed


def test_edge_dates_and_huge_limits_are_clear_answers_not_500s(stack):
    with stack.client() as client:
        assert client.get("/v4/usage", params={"end": "0001-01-01"}).status_code == 200
    with stack.admin() as admin:
        assert admin.get("/v4/admin/usage", params={"end": "0001-01-01"}).status_code == 200
        for body in ({"name": "x", "limits": {"rpm": 2**64}}, {"name": "x", "model_limits": {"m": {"tpm": 2**64}}},
                     {"name": "x", "limits": {"tpm": 10**21}}):
            r = admin.post("/v4/admin/accounts", json=body)
            assert r.status_code == 422, (body, r.text)
        assert admin.post("/v4/admin/accounts", json={"name": "x", "limits": {"rpm": 10**12}}).status_code == 201


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("path", ["/v4/chat-completions", "/v4/jobs"])
def test_a_float_json_cannot_carry_is_a_clear_422(stack, path, literal):
    # Python's JSON encoder (and others) write these; JSON has no such numbers.
    raw = ('{"model": "gpt-4o-mini", "messages": [{"content": "hi"}], '
           f'"model_parameters": {{"temperature": {literal}}}}}').encode()
    with stack.client() as client:
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    detail = r.json()["detail"]
    assert detail[0]["loc"][-1] == "temperature" and "finite" in detail[0]["msg"], detail


def test_a_huge_integer_parameter_is_a_clear_4xx_everywhere(stack):
    huge = 1180591620717411303424  # past 64 bits
    body = {"model": "smollm2-135m-instruct", "messages": [{"content": "hi"}],
            "model_parameters": {"top_k": huge, "max_tokens": 2}}
    with stack.client() as client:
        for path in ("/v4/chat-completions", "/v4/jobs"):
            r = client.post(path, json=body)
            assert r.status_code == 422 and "top_k" in r.text, (path, r.text[:300])
        r = client.post("/v4/batches", json={"requests": [{"custom_id": "a", "url": "/v4/chat-completions",
                                                            "body": body}]})
        assert r.status_code == 201, r.text[:300]
        batch = r.json()
        assert batch["status"] == "failed" and "top_k" in batch["errors"]["data"][0]["message"]
        assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
        for bad in ({"memory_strategy": {"name": "last_k", "params": {"k": huge}}},
                    {"model_parameters": {"max_tokens": huge}}):
            r = client.post("/v4/chat-completions", json={**body, "model_parameters": {}, **bad})
            assert r.status_code == 422, (bad, r.text[:300])
        r = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                      "content": "hi"}], "max_tokens": huge})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text[:300]


HOSTILE_ERROR = {"type": "sk-SECRET-TEST-123", "param": "redis-internal.corp.example",
                 "code": "redis-internal.corp.example"}


def test_an_upstreams_error_fields_never_carry_a_key_or_a_host_to_the_client(stack, fake):
    """The names an upstream's error carries are shown only when they are the family's own."""
    with stack.client() as client:
        fake.script([{"status": 400, "message": "x", "error_fields": HOSTILE_ERROR}])
        v1 = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "max_tokens": 3,
                                                       "messages": [{"role": "user", "content": "hi"}]})
        job = client.get(f"/v4/jobs/{v1.headers['x-chatfleet-job-id']}").json()
        fake.script([{"status": 400, "message": "x", "error_fields": HOSTILE_ERROR}])
        v4 = client.post("/v4/chat-completions", json={"model": "gpt-4o-mini", "messages": [{"content": "hi"}],
                                                       "model_parameters": {"max_tokens": 3}})
        fake.script([{"status": 400, "message": "x", "error_fields": HOSTILE_ERROR}])
        with client.stream("POST", "/v4/chat-completions", json={
                "model": "gpt-4o-mini", "messages": [{"content": "hi"}], "stream": True,
                "model_parameters": {"max_tokens": 3}}) as r:
            streamed = r.read().decode()
    assert v1.status_code == 400 and v4.status_code == 400
    for seen in (v1.text, str(job["error"]), v4.text, streamed):
        assert "SECRET" not in seen and "corp.example" not in seen, seen
    assert "upstream_error" in v1.json()["error"]["message"]


def test_a_batch_body_with_a_float_json_cannot_carry_is_refused_not_run_with_a_default(stack):
    raw = (b'{"requests": [{"custom_id": "a", "url": "/v4/chat-completions", "body": {"model": "gpt-4o-mini", '
           b'"messages": [{"content": "hi"}], "model_parameters": {"temperature": NaN}}}]}')
    with stack.client() as client:
        r = client.post("/v4/batches", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], r.text[:300]
