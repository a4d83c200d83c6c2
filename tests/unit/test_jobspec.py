"""The job spec (shared/jobspec.py): its one completion bound, its reservation, its records, and the one
door-neutral path (api/jobs.py) that makes it from either door's request."""

import msgspec
import orjson
import pytest

from api.batches import LineError, parse_line
from api.jobs import Refused, prepare
from api.openai.batches import LINE_FORMAT as OPENAI_LINES
from api.openai.wire import ChatRequest
from api.sgp.batches import LINE_FORMAT as SGP_LINES
from api.sgp.wire import ChatCompletionRequest
from shared.catalog import get_catalog
from shared.jobspec import (
    BYTES_PER_TOKEN_AT_MOST,
    JobSpec,
    Sampling,
    StagedLine,
    Turn,
    completion_bound,
    prompt_tokens_at_least,
)
from shared.provider_config import ProviderSettings

CATALOG = get_catalog()
RESERVATION = 4096
PROVIDERS = ProviderSettings(openai_api_key="sk-test", anthropic_api_key="ak-test")
FORMATS = {SGP_LINES.url: SGP_LINES, OPENAI_LINES.url: OPENAI_LINES}


def sgp(**body):
    return ChatCompletionRequest.model_validate({"messages": [{"content": "hi"}], **body}).to_request()


def openai(**body):
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body}).to_request()


def prepared(request):
    return prepare(request, "acct", CATALOG, PROVIDERS, RESERVATION)


def test_the_bound_is_the_clients_else_the_models_default_else_the_reservation_within_the_model():
    gpt4, local = CATALOG.get("gpt-4"), CATALOG.get("smollm2-135m-instruct")
    assert completion_bound(gpt4, 10, 7, RESERVATION) == 7
    assert completion_bound(local, 10, None, RESERVATION) == local.default_max_tokens == 100
    assert completion_bound(gpt4, 10, None, RESERVATION) == 4096
    gpt4o = CATALOG.get("gpt-4o")
    assert completion_bound(gpt4o, 10, None, 100_000) == gpt4o.max_output == 16384
    # What the context window leaves after the prompt's lowest estimate: the context check passes it.
    assert completion_bound(gpt4, 6000, None, RESERVATION) == 8192 - 6000
    assert completion_bound(gpt4, 9000, None, RESERVATION) == 1  # and refuses the prompt itself


def test_the_bound_is_what_admission_reserves_and_what_the_spec_carries():
    spec = prepared(sgp(model="gpt-4o")).spec
    assert spec.params.max_tokens == 4096
    assert spec.reserved_tokens == -(-spec.prompt_bytes // BYTES_PER_TOKEN_AT_MOST) + 4096
    asked = prepared(sgp(model="gpt-4o", model_parameters={"max_tokens": 9})).spec
    assert asked.params.max_tokens == 9 and asked.reserved_tokens == 1 + 9


def test_a_prompt_that_fills_the_context_window_is_refused_whatever_the_bound():
    words = "word " * 9000  # 45,000 bytes: at least 7,500 tokens plus the framing
    with pytest.raises(Refused) as refused:
        prepared(sgp(model="gpt-4", messages=[{"content": words}], model_parameters={"max_tokens": 1000}))
    assert refused.value.code == "context_length_exceeded"
    fits = prepared(sgp(model="gpt-4", messages=[{"content": words}])).spec
    assert fits.params.max_tokens == 8192 - prompt_tokens_at_least(fits.messages, None)


def test_both_doors_make_the_same_spec_of_the_same_request():
    from_sgp = prepared(sgp(model="gpt-4o", model_parameters={"max_tokens": 12, "temperature": 0.5, "topP": 0.9,
                                                              "stop_sequences": ["x"], "seed": 4})).spec
    from_openai = prepared(openai(model="gpt-4o", max_completion_tokens=12, temperature=0.5, top_p=0.9, stop=["x"],
                                  seed=4)).spec
    assert from_sgp == from_openai
    # Each door's own default temperature when none is sent, within what the model takes.
    assert prepared(sgp(model="gpt-4o")).spec.params.temperature == 0.2
    assert prepared(openai(model="gpt-4o")).spec.params.temperature == 1.0
    assert prepared(openai(model="claude-3-haiku-20240307")).spec.params.temperature == 1.0
    assert prepared(openai(model="gpt-4o", stop="x")).spec.params.stop == ("x",)


def test_both_doors_refuse_a_parameter_the_same_way():
    for request in (sgp(model="gpt-4o", model_parameters={"top_k": 3}), openai(model="claude-3-haiku-20240307",
                                                                               temperature=1.5)):
        with pytest.raises(Refused) as refused:
            prepared(request)
        assert refused.value.status_code == 400 and refused.value.param in ("top_k", "temperature")
    with pytest.raises(Refused) as refused:
        prepared(sgp(model="gpt-4o", account_id="someone-else"))
    assert refused.value.status_code == 403
    with pytest.raises(Refused) as refused:
        prepared(openai(model="no-such-model"))
    assert refused.value.code == "model_not_found"
    with pytest.raises(Refused) as refused:
        prepared(openai(model="gemini-1.5-pro-002"))  # its provider is not configured here
    assert refused.value.code == "model_not_available" and "GEMINI_API_KEY" in str(refused.value)


def test_a_batch_line_takes_the_same_path_and_the_same_checks():
    seen: set[str] = set()

    def line(url, body, custom_id):
        raw = orjson.dumps({"custom_id": custom_id, "url": url, "body": body})
        return parse_line(raw, seen, "acct", CATALOG, PROVIDERS, FORMATS, RESERVATION)

    staged = line("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, "a")
    assert (staged.custom_id, staged.model, staged.queue) == ("a", "gpt-4o", "chatfleet.batch")
    assert JobSpec.load(bytes(staged.spec)) == prepared(openai(model="gpt-4o")).spec
    assert StagedLine.load(staged.dump()) == staged
    with pytest.raises(LineError, match="GET /v4/models"):  # the interactive request's own words
        line("/v4/chat-completions", {"model": "nope", "messages": [{"content": "hi"}]}, "b")
    with pytest.raises(LineError, match="url must be /v4/chat-completions or /v1/chat/completions"):
        line("/v1/embeddings", {"model": "gpt-4o"}, "c")
    with pytest.raises(LineError, match="cannot act for the account_id"):
        line("/v4/chat-completions", {"model": "gpt-4o", "messages": [{"content": "hi"}], "account_id": "x"}, "d")


def test_a_spec_round_trips_and_refuses_what_it_does_not_know():
    spec = prepared(sgp(model="gpt-4o", model_parameters={"seed": 3})).spec
    assert JobSpec.load(spec.dump()) == spec
    assert b"top_k" not in spec.dump()  # what the client did not set is not written
    with pytest.raises(msgspec.ValidationError):
        JobSpec.load(orjson.dumps({**orjson.loads(spec.dump()), "surprise": 1}))
    with pytest.raises(msgspec.ValidationError):
        JobSpec.load(orjson.dumps({**orjson.loads(spec.dump()), "messages": [{"role": "tool", "content": "x"}]}))


def test_a_spec_recorded_before_the_bound_gets_it_as_a_new_one_would():
    # A job queued, or a batch line staged, by an API process of before: no bound in its spec.
    old = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "prompt": None,
           "params": {"temperature": 0.2, "max_tokens": None, "stop": []}, "prompt_bytes": 2}
    spec = JobSpec.load(orjson.dumps(old), CATALOG, RESERVATION)
    assert spec.params == Sampling(temperature=0.2, max_tokens=4096)
    assert spec.messages == (Turn("user", "hi"),)
    old_local = {**old, "model": "smollm2-135m-instruct", "prompt": "<p>"}
    assert JobSpec.load(orjson.dumps(old_local), CATALOG, RESERVATION).params.max_tokens == 100
    gone = {**old, "model": "no-longer-in-the-catalog"}
    assert JobSpec.load(orjson.dumps(gone), CATALOG, RESERVATION).params.max_tokens == RESERVATION
    asked = {**old, "params": {**old["params"], "max_tokens": 7}}
    assert JobSpec.load(orjson.dumps(asked), CATALOG, RESERVATION).params.max_tokens == 7
