"""The job spec (shared/jobspec.py): its one completion bound, its reservation, its records, and the one
door-neutral path (api/jobs.py) that makes it from either door's request."""

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
    MESSAGE_OVERHEAD_AT_MOST,
    JobSpec,
    Sampling,
    StagedLine,
    Turn,
    UnreadableSpec,
    completion_bound,
    prompt_tokens_at_least,
    prompt_tokens_at_most,
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


def words(n: int) -> tuple[Turn, ...]:
    return (Turn("user", "word " * n),)


def test_the_bound_is_the_clients_else_the_models_default_else_the_reservation_within_the_model():
    gpt4, local = CATALOG.get("gpt-4"), CATALOG.get("smollm2-135m-instruct")
    hi = (Turn("user", "hi"),)
    assert completion_bound(gpt4, hi, None, 7, RESERVATION) == 7
    assert completion_bound(local, (), "<p>", None, RESERVATION) == local.default_max_tokens == 100
    assert completion_bound(gpt4, hi, None, None, RESERVATION) == 4096
    gpt4o = CATALOG.get("gpt-4o")
    assert completion_bound(gpt4o, hi, None, None, 100_000) == gpt4o.max_output == 16384
    # What the context window leaves after the prompt's highest estimate: a 4,096-token model
    # asked "hi" is not sent max_tokens 4,096 (the provider would refuse the prompt with it).
    small = CATALOG.get("gpt-3.5-turbo-0613")
    assert small.context_window == 4096
    assert completion_bound(small, hi, None, None, RESERVATION) == 4096 - 1 - MESSAGE_OVERHEAD_AT_MOST
    big = words(4000)  # 20,000 bytes: 3,334 to 6,675 tokens
    assert completion_bound(gpt4, big, None, None, RESERVATION) == 8192 - prompt_tokens_at_most(big, None)
    # A prompt that may all but fill the window: what its lowest estimate leaves, for the
    # provider (which counts exactly) to accept or refuse; past even that, it is refused here.
    huge = words(7000)
    assert completion_bound(gpt4, huge, None, None, RESERVATION) == 8192 - prompt_tokens_at_least(huge, None)
    assert completion_bound(gpt4, words(9900), None, None, RESERVATION) == 1


def test_the_bound_is_what_admission_reserves_and_what_the_spec_carries():
    spec = prepared(sgp(model="gpt-4o")).spec
    assert spec.params.max_tokens == 4096
    assert spec.reserved_tokens == prompt_tokens_at_most(spec.messages, None) + 4096
    asked = prepared(sgp(model="gpt-4o", model_parameters={"max_tokens": 9})).spec
    # "hi": 2 bytes, one token at most, and the message's framing.
    assert asked.params.max_tokens == 9 and asked.reserved_tokens == 1 + MESSAGE_OVERHEAD_AT_MOST + 9


def test_a_prompt_that_fills_the_context_window_is_refused_with_or_without_a_bound():
    text = "word " * 9000  # 45,000 bytes: at least 7,500 tokens plus the framing
    with pytest.raises(Refused) as refused:
        prepared(sgp(model="gpt-4", messages=[{"content": text}], model_parameters={"max_tokens": 1000}))
    assert refused.value.code == "context_length_exceeded" and "plus max_tokens (1000)" in str(refused.value)
    fits = prepared(sgp(model="gpt-4", messages=[{"content": text}])).spec
    assert fits.params.max_tokens == 8192 - prompt_tokens_at_least(fits.messages, None)
    with pytest.raises(Refused) as refused:  # no bound asked: said of the prompt alone
        prepared(sgp(model="gpt-4", messages=[{"content": "word " * 9900}]))
    assert refused.value.code == "context_length_exceeded" and "leaves no room" in str(refused.value)
    assert "max_tokens" not in str(refused.value)


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
    for request, param in ((sgp(model="gpt-4o", model_parameters={"top_k": 3}), "top_k"),
                           (openai(model="claude-3-haiku-20240307", temperature=1.5), "temperature"),
                           (sgp(model="claude-3-haiku-20240307", model_parameters={"max_tokens": 5000}),
                            "max_tokens")):
        with pytest.raises(Refused) as refused:
            prepared(request)
        assert (refused.value.status_code, refused.value.param) == (400, param)
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


def test_a_spec_round_trips_reads_a_newer_one_and_refuses_a_broken_one():
    spec = prepared(sgp(model="gpt-4o", model_parameters={"seed": 3})).spec
    assert JobSpec.load(spec.dump()) == spec
    assert b"top_k" not in spec.dump()  # what the client did not set is not written
    # Written by a newer API process during a rolling upgrade: what this worker does not know
    # of is left, the rest runs.
    newer = orjson.loads(spec.dump())
    newer["prediction"], newer["params"]["logprobs"] = {"type": "content"}, True
    assert JobSpec.load(orjson.dumps(newer)) == spec
    for broken in (b"", b"{not json", orjson.dumps({**orjson.loads(spec.dump()), "messages": [{"role": "tool"}]}),
                   orjson.dumps({"model": "gpt-4o"})):
        with pytest.raises(UnreadableSpec, match="cannot be read"):
            JobSpec.load(broken)


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
