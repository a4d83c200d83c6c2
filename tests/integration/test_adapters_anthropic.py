"""The Anthropic Messages adapter against the fake provider."""


import pytest

from tests.integration.adapter_harness import (
    HI,
    MIXED_TURNS,
    adapter_error,
    request_for,
    run_adapter,
)

pytestmark = pytest.mark.integration

MODEL = "claude-3-haiku-20240307"


def test_anthropic_request_on_the_wire(fake):
    run_adapter(fake, "anthropic", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    (sent,) = fake.requests(family="anthropic")
    assert sent["path"] == "/v1/messages"
    body = sent["body"]
    assert body["model"] == "claude-3-haiku-20240307" and body["stream"] is True
    assert body["messages"] == HI and body["max_tokens"] == 5 and body["temperature"] == 0.2
    assert "system" not in body and "stop_sequences" not in body
    assert sent["headers"]["x-api-key"] == "ak-test"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["headers"]["content-type"] == "application/json"


def test_anthropic_natural_end_is_stop(fake):
    deltas, done = run_adapter(fake, "anthropic", request_for(MODEL, HI))
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.completion_tokens) == ("stop", 16)


def test_anthropic_system_merged_turns_parameters_and_stop(fake):
    req = request_for(MODEL, MIXED_TURNS, model_parameters={"temperature": 0.7, "top_k": 5, "top_p": 0.9,
                                                            "stop_sequences": ["tok3"]})
    deltas, done = run_adapter(fake, "anthropic", req)
    assert "".join(deltas) == "tok0 tok1 tok2 "
    # stop_sequence -> stop; the token holding the match is counted, as Anthropic does
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 10, 4)
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["system"] == "be nice\n\nand brief"
    assert body["messages"] == [
        {"role": "user", "content": "hi there\n\nagain"},
        {"role": "assistant", "content": "ok\n\nsure"},
        {"role": "user", "content": "go"},
    ]
    assert body["stop_sequences"] == ["tok3"]
    assert (body["temperature"], body["top_k"], body["top_p"]) == (0.7, 5, 0.9)
    assert body["max_tokens"] == 4096  # required upstream: the model's max_output when unset


def test_anthropic_instructions_become_the_system_prompt(fake):
    run_adapter(fake, "anthropic", request_for(MODEL, HI, instructions="answer in French"))
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["system"] == "answer in French" and body["messages"] == HI


def test_anthropic_needs_the_conversation_to_start_with_a_user_message(fake):
    req = request_for(MODEL, [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hello"},
                              *HI])
    err = adapter_error(fake, "anthropic", req)
    assert err.code == "invalid_request" and not err.retryable
    assert "start with a user message" in err.message
    assert fake.requests(family="anthropic") == []


def test_anthropic_client_prefill_loses_trailing_whitespace(fake):
    req = request_for(MODEL, [*HI, {"role": "assistant", "content": "Sure: "}])
    run_adapter(fake, "anthropic", req)
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure:"}


def test_anthropic_continues_after_delivered_text_with_a_prefill(fake):
    req = request_for(MODEL, HI, continuation="tok0 tok1", continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "anthropic", req)
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["messages"] == [*HI, {"role": "assistant", "content": "tok0 tok1"}]
    assert body["max_tokens"] == 3
    # The model continues the prefill: its text follows what was delivered, nothing repeated.
    assert "".join(deltas) == " tok2 tok3 tok4"
    # One call's worth of usage: the prefill counts as completion, not prompt.
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 3 + 2)


def test_anthropic_prefill_trailing_whitespace_is_not_delivered_twice(fake):
    # "tok0 tok1 " was delivered; Anthropic refuses a prefill ending in whitespace, so "tok0 tok1"
    # is sent, and the model's " tok2" loses the space the subscriber already has.
    req = request_for(MODEL, HI, continuation="tok0 tok1 ", continuation_events=2)
    deltas, done = run_adapter(fake, "anthropic", req)
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": "tok0 tok1"}
    assert body["max_tokens"] == 4096 - 2  # the default, less what was delivered
    assert "tok0 tok1 " + "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 3, 14 + 2)


def test_anthropic_prefill_extends_a_final_assistant_message(fake):
    req = request_for(MODEL, [*HI, {"role": "assistant", "content": "Sure:"}], continuation=" tok0",
                      continuation_events=1)
    run_adapter(fake, "anthropic", req)
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["messages"] == [*HI, {"role": "assistant", "content": "Sure: tok0"}]
