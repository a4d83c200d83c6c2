"""The Anthropic Messages adapter against the fake provider."""

import dataclasses

import pytest

from tests.integration.adapter_harness import adapter_error, request_for, run_adapter
from worker.providers.anthropic import LeadingSkipper

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "say something nice"}]
MODEL = "claude-3-haiku-20240307"


def test_anthropic_streams_text_usage_and_finish(fake):
    deltas, done = run_adapter(fake, "anthropic", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    assert "".join(deltas) == "tok0 tok1 tok2 tok3 tok4"
    assert len(deltas) == 5
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 5)
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
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi there"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "and brief"},
        {"role": "assistant", "content": "sure"},
        {"role": "user", "content": "go"},
    ]
    req = request_for(MODEL, messages, model_parameters={"temperature": 0.7, "top_k": 5, "top_p": 0.9,
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


@pytest.mark.parametrize("behaviour, code, retryable", [
    ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
    ({"status": 529}, "upstream_unavailable", True),
    ({"status": 500}, "upstream_unavailable", True),
    ({"status": 503}, "upstream_unavailable", True),
    ({"status": 400, "message": "temperature: out of range"}, "upstream_rejected", False),
    ({"status": 400, "message": "prompt is too long: 210000 tokens > 200000 maximum"},
     "context_length_exceeded", False),
    ({"status": 401}, "upstream_auth", False),
    ({"status": 404}, "upstream_rejected", False),
    ({"cut_after": 3}, "stream_cut", True),
    ({"status": 529, "error_after": 2}, "upstream_unavailable", True),
    ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
    ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),
    ({"status": 400, "error_after": 2, "message": "bad content"}, "upstream_rejected", False),
])
def test_anthropic_faults_are_classified(fake, behaviour, code, retryable):
    fake.script([behaviour], family="anthropic")
    err = adapter_error(fake, "anthropic", request_for(MODEL, HI))
    assert (err.code, err.retryable) == (code, retryable), err
    if "retry_after" in behaviour:
        assert err.retry_after == 2
    if behaviour.get("message"):
        assert behaviour["message"] in err.message
    if "error_after" in behaviour:
        assert "mid-stream" in err.message


def test_anthropic_refused_key_is_not_echoed(fake):
    fake.config(api_key="the-right-key")
    err = adapter_error(fake, "anthropic", request_for(MODEL, HI))
    assert err.code == "upstream_auth" and not err.retryable
    assert "ak-test" not in err.message


def test_anthropic_unconfigured_names_the_variable(fake):
    err = adapter_error(fake, "anthropic", request_for(MODEL, HI), anthropic_api_key=None)
    assert err.code == "model_unavailable" and "ANTHROPIC_API_KEY" in err.message
    assert fake.requests(family="anthropic") == []


def test_anthropic_hang_hits_first_token_timeout(fake):
    fake.script([{"hang": True}], family="anthropic")
    err = adapter_error(fake, "anthropic", request_for(MODEL, HI), provider_first_token_timeout=0.5)
    assert err.code == "upstream_timeout" and err.retryable
    assert "0.5 s" in err.message


def test_anthropic_stall_between_tokens_hits_idle_timeout(fake):
    fake.script([{"tokens_per_s": 1, "tokens": 5}], family="anthropic")
    err = adapter_error(fake, "anthropic", request_for(MODEL, HI), provider_idle_timeout=0.3)
    assert err.code == "upstream_timeout" and "next token" in err.message


def test_anthropic_spec_extra_and_base_url(fake):
    req = request_for(MODEL, HI, model_parameters={"max_tokens": 2})
    spec = req.spec.model_copy(update={"extra": {"metadata": {"user_id": "u1"}, "top_k": 3},
                                       "base_url": fake.base_url})
    req = dataclasses.replace(req, spec=spec)
    # the configured base URL points nowhere: the model's own base_url must win
    deltas, _ = run_adapter(fake, "anthropic", req, anthropic_base_url="http://127.0.0.1:9")
    assert "".join(deltas) == "tok0 tok1"
    body = fake.requests(family="anthropic")[0]["body"]
    assert body["metadata"] == {"user_id": "u1"} and body["top_k"] == 3


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


def test_leading_skipper_drops_only_the_stripped_whitespace():
    def run(pending, pieces):
        skip = LeadingSkipper(pending)
        return [skip.feed(p) for p in pieces]

    assert run(" ", [" world", " again"]) == ["world", " again"]
    assert run(" ", ["world"]) == ["world"]                  # no space: the delivered one separates
    assert run("\n\n", ["\n", "\nHi"]) == ["", "Hi"]          # matched across deltas
    assert run("\n\n", ["\n", "Hi", "\n\n"]) == ["", "Hi", "\n\n"]
    assert run(" ", ["\n\nHi"]) == ["\n\nHi"]                # different whitespace passes unchanged
    assert run(" ", ["  two"]) == [" two"]                   # only as much as was stripped
    assert run("", [" x"]) == [" x"]
