"""The Gemini adapter against the fake provider."""


import pytest

from tests.integration.adapter_harness import HI, MIXED_TURNS, request_for, run_adapter
from worker.providers.gemini import finish_reason

pytestmark = pytest.mark.integration

MODEL = "gemini-1.5-pro-002"


def test_gemini_request_on_the_wire(fake):
    run_adapter(fake, "gemini", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    (sent,) = fake.requests(family="gemini")
    assert sent["path"] == "/v1beta/models/gemini-1.5-pro-002:streamGenerateContent"
    assert sent["query"] == {"alt": "sse"}
    assert sent["headers"]["x-goog-api-key"] == "gk-test"
    body = sent["body"]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "say something nice"}]}]
    assert body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 5}
    assert "systemInstruction" not in body


def test_gemini_natural_end_is_stop_and_the_default_bound_is_sent(fake):
    deltas, done = run_adapter(fake, "gemini", request_for(MODEL, HI))
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.completion_tokens) == ("stop", 16)
    # No max_tokens asked: the job's bound (CHATFLEET_DEFAULT_COMPLETION_RESERVATION), what admission reserved.
    assert fake.requests(family="gemini")[0]["body"]["generationConfig"]["maxOutputTokens"] == 4096


def test_gemini_system_roles_merged_turns_parameters_and_stop(fake):
    req = request_for(MODEL, MIXED_TURNS, model_parameters={"temperature": 0.7, "top_k": 5, "top_p": 0.9,
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
    assert body["generationConfig"] == {"temperature": 0.7, "maxOutputTokens": 4096, "topK": 5, "topP": 0.9,
                                        "stopSequences": ["tok3"]}


def test_gemini_instructions_become_the_system_instruction(fake):
    run_adapter(fake, "gemini", request_for(MODEL, HI, instructions="answer in French"))
    body = fake.requests(family="gemini")[0]["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "answer in French"}]}


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


def test_gemini_continuation_without_max_tokens_asks_what_the_default_bound_leaves(fake):
    req = request_for(MODEL, HI, continuation="tok0 tok1 tok2", continuation_events=3)
    deltas, done = run_adapter(fake, "gemini", req)
    assert fake.requests(family="gemini")[0]["body"]["generationConfig"]["maxOutputTokens"] == 4096 - 3
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
