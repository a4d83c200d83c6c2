"""OpenAI and LLM-Engine (OpenAI-compatible completions) adapters against the fake provider."""

import pytest

from tests.integration.adapter_harness import (
    HI,
    adapter_error,
    request_for,
    run_adapter,
)

pytestmark = pytest.mark.integration


def test_openai_request_on_the_wire(fake):
    run_adapter(fake, "openai", request_for("gpt-4o", HI, model_parameters={"max_tokens": 5}))
    (sent,) = fake.requests(family="openai")
    body = sent["body"]
    assert body["model"] == "gpt-4o" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == HI and body["max_tokens"] == 5 and body["temperature"] == 0.2
    assert sent["headers"]["authorization"] == "Bearer sk-test"


def test_openai_passes_parameters_and_stop(fake):
    req = request_for("gpt-4o-mini", [{"role": "system", "content": "be nice"}, *HI],
                      model_parameters={"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.5,
                                        "presence_penalty": 0.1, "stop_sequences": ["tok3"]})
    deltas, done = run_adapter(fake, "openai", req)
    assert "".join(deltas) == "tok0 tok1 tok2 "
    assert done.finish_reason == "stop"
    body = fake.requests(family="openai")[0]["body"]
    assert body["stop"] == ["tok3"] and body["top_p"] == 0.9
    assert body["frequency_penalty"] == 0.5 and body["presence_penalty"] == 0.1
    assert body["max_tokens"] == 4096  # no max_tokens asked: the job's bound, what admission reserved
    assert body["messages"][0] == {"role": "system", "content": "be nice"}


def test_openai_retry_after_delivered_text_skips_what_was_sent(fake):
    deltas, done = run_adapter(fake, "openai", request_for("gpt-4", HI, continuation="tok0 tok1",
                                                           continuation_events=2, model_parameters={"max_tokens": 4}))
    assert "".join(deltas) == " tok2 tok3"
    assert done.completion_tokens == 4  # the regenerated call's own count covers the whole answer


def test_openai_retry_that_diverges_stops_rather_than_contradict(fake):
    err = adapter_error(fake, "openai", request_for("gpt-4", HI, continuation="something else"))
    assert err.code == "stream_interrupted" and not err.retryable


def test_llm_engine_sends_the_rendered_prompt(fake):
    req = request_for("llama-3-8b-instruct", HI, model_parameters={"max_tokens": 3, "top_k": 5})
    deltas, done = run_adapter(fake, "llm_engine", req)
    assert "".join(deltas) == "tok0 tok1 tok2"
    assert (done.finish_reason, done.completion_tokens) == ("length", 3)
    body = fake.requests(path="/v1/completions")[0]["body"]
    assert body["prompt"] == req.prompt and "say something nice" in body["prompt"]
    assert body["model"] == req.model.upstream and body["top_k"] == 5 and body["max_tokens"] == 3


def test_llm_engine_default_max_tokens_is_100(fake):
    req = request_for("mixtral-8x7b-instruct", HI)
    run_adapter(fake, "llm_engine", req)
    assert fake.requests(path="/v1/completions")[0]["body"]["max_tokens"] == 100


def test_llm_engine_continues_after_delivered_text(fake):
    req = request_for("llama-3-8b-instruct", HI, continuation="tok0 tok1", continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "llm_engine", req)
    body = fake.requests(path="/v1/completions")[0]["body"]
    assert body["prompt"] == req.prompt + "tok0 tok1"
    assert body["max_tokens"] == 3
    # One call's worth of usage: the carried text counts as completion, not prompt.
    assert done.completion_tokens == 3 + 2
