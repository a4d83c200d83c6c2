"""Every family through the whole fleet (API → Redis → worker → adapter → fake provider)."""

from __future__ import annotations

import json

import pytest
from scale_gp import SGPClient

from tests.conftest import DEV_KEY
from tests.helpers import FAMILY_MODELS, content_of, poll_until_done, read_sse

pytestmark = pytest.mark.integration

MODELS = pytest.mark.parametrize("family, model", list(FAMILY_MODELS.items()), ids=list(FAMILY_MODELS))
Q = [{"role": "user", "content": "four words go here"}]


def body(model: str, **extra) -> dict:
    return {"model": model, "messages": Q, "model_parameters": {"max_tokens": 5}, **extra}


@MODELS
def test_sync_and_streaming_through_the_sdk(stack, fake, family, model):
    sdk = SGPClient(api_key=DEV_KEY, base_url=stack.base_url, max_retries=0)
    reply = sdk.chat_completions.create(model=model, messages=Q, model_parameters={"max_tokens": 5})
    assert reply.chat_completion.message.content == "tok0 tok1 tok2 tok3 tok4"
    assert reply.chat_completion.finish_reason == "length"
    (sent,) = fake.requests()
    # The fake counts whitespace words of everything it is sent: the rendered prompt for a
    # raw-prompt family, the four words of the message otherwise.
    prompt_words = len(sent["body"]["prompt"].split()) if family == "llm_engine" else 4
    usage = reply.token_usage
    assert (usage.prompt, usage.completion, usage.total) == (prompt_words, 5, prompt_words + 5)

    chunks = list(sdk.chat_completions.create(model=model, messages=Q, stream=True,
                                              model_parameters={"max_tokens": 3, "stop_sequences": ["tok2"]}))
    assert "".join(c.completions[0][1][0] for c in chunks) == "tok0 tok1 "
    assert chunks[-1].finish_reason == "stop"
    assert {r["family"] for r in fake.requests()} == {family if family != "llm_engine" else "openai"}


@MODELS
def test_rate_limited_then_served(stack, fake, family, model):
    fake.script([{"status": 429, "retry_after": 0.2}, {"status": 503}])
    with stack.client() as client:
        job = client.post("/v4/jobs", json=body(model)).json()
        done = poll_until_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1  # retried inside the attempt, not redelivered
    assert done["result"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4"
    assert len(fake.requests()) == 3


@MODELS
def test_stream_cut_midway_is_resumed_without_duplicate_text(stack, fake, family, model):
    fake.script([{"cut_after": 3, "tokens_per_s": 200}])
    with stack.client() as client:
        job = client.post("/v4/jobs", json=body(model, model_parameters={"max_tokens": 8, "temperature": 0})).json()
        done = poll_until_done(client, job["id"])
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            events = read_sse(r)
    assert done["status"] == "succeeded", done
    text = done["result"]["chat_completion"]["message"]["content"]
    assert content_of(events) == text
    assert text.startswith("tok0 tok1 tok2")
    assert text.count("tok0") == 1 and text.count("tok1") == 1 and text.count("tok2") == 1
    assert len(fake.requests()) == 2


@MODELS
def test_upstream_rejection_is_a_clear_job_error_and_sync_400(stack, fake, family, model):
    fake.script([{"status": 400, "message": "unsupported value for temperature"}])
    with stack.client() as client:
        job = client.post("/v4/jobs", json=body(model)).json()
        done = poll_until_done(client, job["id"])
        assert done["status"] == "failed"
        assert done["error"]["code"] == "upstream_rejected"
        # The fleet's words, with the status: the upstream's own text stays in the worker's log.
        assert "HTTP 400" in done["error"]["message"] and "unsupported value" not in done["error"]["message"]
        fake.script([{"status": 400, "message": "unsupported value for temperature"}])
        r = client.post("/v4/chat-completions", json=body(model))
    assert r.status_code == 400 and r.json()["code"] == "upstream_rejected" and "HTTP 400" in r.json()["detail"]


def test_persistent_rate_limit_is_a_429_with_retry_after(stack, fake):
    fake.script([{"status": 429, "retry_after": 0.1, "times": 10}])
    with stack.client() as client:
        r = client.post("/v4/chat-completions", json=body("gpt-4"))
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert r.json()["code"] == "upstream_rate_limited"


def test_streaming_error_after_start_is_an_error_event(stack, fake):
    fake.script([{"cut_after": 2, "times": 10}])
    with stack.client() as client, client.stream(
            "POST", "/v4/chat-completions", json=body("gpt-4", stream=True)) as r:
        events = read_sse(r)
    assert r.status_code == 200
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["code"] in ("stream_cut", "stream_interrupted")
    assert content_of(events[:-1]) == "tok0 tok1"  # what was sent stays sent, once


def test_models_lists_the_catalog_with_availability(stack):
    with stack.client() as client:
        models = {m["id"]: m for m in client.get("/v4/models").json()["data"]}
    assert len(models) >= 44
    assert models["gpt-4o"]["available"] and models["smollm2-135m-instruct"]["available"]
    assert models["llama-3-8b-instruct"]["chat_template"] is True
    assert models["gpt-4o"]["chat_template"] is False


def test_unconfigured_provider_is_a_400_at_submit(own_stack):
    stack = own_stack(interactive=False)  # no provider settings at all
    with stack.client() as client:
        r = client.post("/v4/jobs", json=body("claude-3-haiku-20240307"))
        assert r.status_code == 400 and "ANTHROPIC_API_KEY" in r.json()["detail"]
        r = client.post("/v4/chat-completions", json=body("gpt-4"))
        assert r.status_code == 400 and "OPENAI_API_KEY" in r.json()["detail"]
        listed = {m["id"]: m for m in client.get("/v4/models").json()["data"]}
    assert listed["gpt-4"]["available"] is False and listed["gpt-4"]["missing_setting"] == "OPENAI_API_KEY"
    assert listed["smollm2-135m-instruct"]["available"] is True


def test_parameter_a_model_does_not_take_is_a_400_naming_it(stack):
    with stack.client() as client:
        r = client.post("/v4/chat-completions", json=body("gpt-4o", model_parameters={"topK": 3}))
    assert r.status_code == 400
    assert "top_k" in r.json()["detail"] and "gpt-4o" in r.json()["detail"]


def test_prompt_that_cannot_fit_the_context_is_a_400_before_any_call(stack, fake):
    huge = "word " * 60_000  # 300 kB: more than gpt-4's 8192 tokens however it is tokenized
    with stack.client() as client:
        r = client.post("/v4/jobs", json={"model": "gpt-4", "messages": [{"content": huge}]})
    assert r.status_code == 400 and "context window" in r.json()["detail"]
    assert fake.requests() == []


def test_chat_template_on_a_hosted_family_is_a_400(stack):
    with stack.client() as client:
        r = client.post("/v4/jobs", json=body("claude-3-haiku-20240307", chat_template="{{ messages }}"))
    assert r.status_code == 400 and "chat_template" in r.json()["detail"]


def test_custom_chat_template_reaches_the_raw_prompt_provider(stack, fake):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    with stack.client() as client:
        r = client.post("/v4/chat-completions", json=body("mixtral-8x7b-instruct", chat_template=template,
                                                          instructions="be terse"))
    assert r.status_code == 200
    sent = fake.requests(path="/v1/completions")[0]["body"]
    assert sent["prompt"] == "<system>be terse<user>four words go here<assistant>"


def test_local_model_context_overflow_is_a_clear_error(stack):
    # ~5,000 tokens for the tokenizer, under the API's low estimate, over the 4,096 the
    # test fleet gives each llama.cpp slot: the worker's exact check refuses it.
    text = " ".join(f"w{i}" for i in range(3000))
    with stack.client() as client:
        r = client.post("/v4/chat-completions", json={"model": "smollm2-longrun", "messages": [{"content": text}],
                                                      "model_parameters": {"max_tokens": 5}})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "context_length_exceeded"
