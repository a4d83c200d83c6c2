"""The Gemini adapter against the fake provider."""

import dataclasses

import pytest

from tests.integration.adapter_harness import adapter_error, request_for, run_adapter
from worker.providers.gemini import finish_reason

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "say something nice"}]
MODEL = "gemini-1.5-pro-002"


def test_gemini_streams_text_usage_and_finish(fake):
    deltas, done = run_adapter(fake, "gemini", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    assert "".join(deltas) == "tok0 tok1 tok2 tok3 tok4"
    assert len(deltas) == 5
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 5)
    (sent,) = fake.requests(family="gemini")
    assert sent["path"] == "/v1beta/models/gemini-1.5-pro-002:streamGenerateContent"
    assert sent["query"] == {"alt": "sse"}
    assert sent["headers"]["x-goog-api-key"] == "gk-test"
    body = sent["body"]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "say something nice"}]}]
    assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 5}
    assert "systemInstruction" not in body


def test_gemini_natural_end_is_stop_and_max_tokens_is_left_out(fake):
    deltas, done = run_adapter(fake, "gemini", request_for(MODEL, HI))
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.completion_tokens) == ("stop", 16)
    assert "maxOutputTokens" not in fake.requests(family="gemini")[0]["body"]["generationConfig"]


def test_gemini_system_roles_merged_turns_parameters_and_stop(fake):
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
    deltas, done = run_adapter(fake, "gemini", req)
    assert "".join(deltas) == "tok0 tok1 tok2 "
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 10, 4)
    body = fake.requests(family="gemini")[0]["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "be nice\n\nand brief"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "hi there\n\nagain"}]},
        {"role": "model", "parts": [{"text": "ok\n\nsure"}]},
        {"role": "user", "parts": [{"text": "go"}]},
    ]
    assert body["generationConfig"] == {"temperature": 0.7, "topK": 5, "topP": 0.9, "stopSequences": ["tok3"]}


def test_gemini_instructions_become_the_system_instruction(fake):
    run_adapter(fake, "gemini", request_for(MODEL, HI, instructions="answer in French"))
    body = fake.requests(family="gemini")[0]["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "answer in French"}]}


@pytest.mark.parametrize("behaviour, code, retryable", [
    ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
    ({"status": 503}, "upstream_unavailable", True),
    ({"status": 500}, "upstream_unavailable", True),
    ({"status": 400, "message": "Invalid value at 'generation_config.temperature'"}, "upstream_rejected", False),
    ({"status": 400, "message": "The input token count (3000000) exceeds the maximum number of tokens allowed "
                                "(2097152). Input is too long."}, "context_length_exceeded", False),
    ({"status": 401}, "upstream_auth", False),
    ({"status": 403}, "upstream_auth", False),
    ({"status": 404}, "upstream_rejected", False),
    ({"cut_after": 3}, "stream_cut", True),
    ({"status": 503, "error_after": 2}, "upstream_unavailable", True),
    ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
    ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),
    ({"status": 400, "error_after": 2, "message": "bad content"}, "upstream_rejected", False),
])
def test_gemini_faults_are_classified(fake, behaviour, code, retryable):
    fake.script([behaviour], family="gemini")
    err = adapter_error(fake, "gemini", request_for(MODEL, HI))
    assert (err.code, err.retryable) == (code, retryable), err
    if "retry_after" in behaviour:
        assert err.retry_after == 2
    if behaviour.get("message"):
        assert behaviour["message"] in err.message
    if "error_after" in behaviour:
        assert "mid-stream" in err.message


def test_gemini_refused_key_is_not_echoed(fake):
    fake.config(api_key="the-right-key")
    err = adapter_error(fake, "gemini", request_for(MODEL, HI))
    assert err.code == "upstream_auth" and not err.retryable
    assert "gk-test" not in err.message


def test_gemini_unconfigured_names_the_variable(fake):
    err = adapter_error(fake, "gemini", request_for(MODEL, HI), gemini_api_key=None)
    assert err.code == "model_unavailable" and "GEMINI_API_KEY" in err.message
    assert fake.requests(family="gemini") == []


def test_gemini_hang_hits_first_token_timeout(fake):
    fake.script([{"hang": True}], family="gemini")
    err = adapter_error(fake, "gemini", request_for(MODEL, HI), provider_first_token_timeout=0.5)
    assert err.code == "upstream_timeout" and err.retryable
    assert "0.5 s" in err.message


def test_gemini_stall_between_tokens_hits_idle_timeout(fake):
    fake.script([{"tokens_per_s": 1, "tokens": 5}], family="gemini")
    err = adapter_error(fake, "gemini", request_for(MODEL, HI), provider_idle_timeout=0.3)
    assert err.code == "upstream_timeout" and "next token" in err.message


def test_gemini_spec_extra_and_base_url(fake):
    req = request_for(MODEL, HI, model_parameters={"max_tokens": 2})
    spec = req.spec.model_copy(update={
        "extra": {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
                  "generationConfig": {"candidateCount": 1}},
        "base_url": fake.base_url,
    })
    req = dataclasses.replace(req, spec=spec)
    # the configured base URL points nowhere: the model's own base_url must win
    deltas, _ = run_adapter(fake, "gemini", req, gemini_base_url="http://127.0.0.1:9")
    assert "".join(deltas) == "tok0 tok1"
    body = fake.requests(family="gemini")[0]["body"]
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    # a table in extra is merged into ours, not put in its place
    assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 2, "candidateCount": 1}


def test_gemini_continues_after_delivered_text_with_a_model_turn(fake):
    req = request_for(MODEL, HI, continuation="tok0 tok1", continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "gemini", req)
    body = fake.requests(family="gemini")[0]["body"]
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "say something nice"}]},
        {"role": "model", "parts": [{"text": "tok0 tok1"}]},
    ]
    assert body["generationConfig"]["maxOutputTokens"] == 3
    # The model continues the prefill: its text follows what was delivered, nothing repeated.
    assert "".join(deltas) == " tok2 tok3 tok4"
    # One call's worth of usage: the prefill counts as completion, not prompt.
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 3 + 2)


def test_gemini_continuation_without_max_tokens_sets_none(fake):
    req = request_for(MODEL, HI, continuation="tok0 tok1 tok2", continuation_events=3)
    deltas, done = run_adapter(fake, "gemini", req)
    assert "maxOutputTokens" not in fake.requests(family="gemini")[0]["body"]["generationConfig"]
    assert "tok0 tok1 tok2" + "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 3, 16)


def test_gemini_prefill_extends_a_final_model_turn(fake):
    req = request_for(MODEL, [*HI, {"role": "assistant", "content": "Sure:"}], continuation=" tok0",
                      continuation_events=1)
    run_adapter(fake, "gemini", req)
    body = fake.requests(family="gemini")[0]["body"]
    assert body["contents"][-1] == {"role": "model", "parts": [{"text": "Sure: tok0"}]}
    assert len(body["contents"]) == 2


def test_gemini_finish_reasons():
    assert finish_reason("STOP") == "stop"
    assert finish_reason("MAX_TOKENS") == "length"
    for reason in ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"):
        assert finish_reason(reason) == "content_filter"
    assert finish_reason("MALFORMED_FUNCTION_CALL") == "malformed_function_call"
