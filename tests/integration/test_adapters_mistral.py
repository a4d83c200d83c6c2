"""The Mistral chat-completions adapter against the fake provider."""

import dataclasses

import pytest

from tests.integration.adapter_harness import HI, request_for, run_adapter
from worker.providers.openai import job_seed

pytestmark = pytest.mark.integration

MODEL = "mistral-large-latest"


def test_mistral_request_on_the_wire(fake):
    run_adapter(fake, "mistral", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    (sent,) = fake.requests(family="mistral")
    assert sent["path"] == "/mistral/v1/chat/completions"
    body = sent["body"]
    assert body["model"] == "mistral-large-latest" and body["stream"] is True
    assert "stream_options" not in body and "seed" not in body  # not Mistral parameters
    assert body["random_seed"] == job_seed("job_test")
    assert body["messages"] == HI and body["max_tokens"] == 5 and body["temperature"] == 0.2
    assert sent["headers"]["authorization"] == "Bearer mk-test"


def test_mistral_passes_parameters_and_stop(fake):
    req = request_for(MODEL, [{"role": "system", "content": "be nice"}, *HI],
                      model_parameters={"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.5,
                                        "presence_penalty": 0.1, "stop_sequences": ["tok3"]})
    deltas, done = run_adapter(fake, "mistral", req)
    assert "".join(deltas) == "tok0 tok1 tok2 "
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 5, 4)
    body = fake.requests(family="mistral")[0]["body"]
    assert body["stop"] == ["tok3"] and body["top_p"] == 0.9 and body["temperature"] == 0.7
    assert body["frequency_penalty"] == 0.5 and body["presence_penalty"] == 0.1
    assert body["max_tokens"] == 4096  # no max_tokens asked: the job's bound, what admission reserved
    assert body["messages"][0] == {"role": "system", "content": "be nice"}


def test_mistral_natural_end_and_spec_extra_merged_last(fake):
    req = request_for(MODEL, HI)
    req = dataclasses.replace(req, model=req.model.model_copy(update={"extra": {"safe_prompt": True,
                                                                                "temperature": 0.1}}))
    deltas, done = run_adapter(fake, "mistral", req)
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.completion_tokens) == ("stop", 16)
    body = fake.requests(family="mistral")[0]["body"]
    assert body["safe_prompt"] is True and body["temperature"] == 0.1


def test_mistral_seed_is_fixed_per_job(fake):
    run_adapter(fake, "mistral", request_for(MODEL, HI, job_id="job_a"))
    run_adapter(fake, "mistral", request_for(MODEL, HI, job_id="job_a"))
    run_adapter(fake, "mistral", request_for(MODEL, HI, job_id="job_b"))
    seeds = [r["body"]["random_seed"] for r in fake.requests(family="mistral")]
    assert seeds[0] == seeds[1] != seeds[2]


def test_mistral_continues_with_a_prefix_message(fake):
    """The delivered text goes back as an assistant message with ``prefix: true``; the fake, like
    the model, continues it (" tok2 ..."), and the continuation is passed through as it comes."""
    req = request_for(MODEL, HI, continuation="tok0 tok1", continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "mistral", req)
    body = fake.requests(family="mistral")[0]["body"]
    assert body["messages"] == [*HI, {"role": "assistant", "content": "tok0 tok1", "prefix": True}]
    assert body["max_tokens"] == 3  # 5 minus the 2 delivered tokens
    assert "".join(deltas) == " tok2 tok3 tok4"
    # One call's worth of usage: the fake counted the prefix (2 words) as prompt; it is completion.
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 3 + 2)


def test_mistral_drops_a_repeated_prefix(fake):
    """La Plateforme's answer repeats the prefix before continuing it (Mistral's prefix guide
    strips it with ``content[len(prefix):]``); the repeated part is not delivered twice. The fake
    does not repeat prefixes, so a scripted reply text stands in for such an answer: after the
    one-word prefix " Once" the fake replies from the text's second word on, " Once upon a time"."""
    fake.script([{"text": "x Once upon a time"}], family="mistral")
    req = request_for(MODEL, HI, continuation=" Once", continuation_events=1)
    deltas, done = run_adapter(fake, "mistral", req)
    assert fake.requests(family="mistral")[0]["body"]["messages"][-1] == {
        "role": "assistant", "content": " Once", "prefix": True}
    assert "".join(deltas) == " upon a time"
    assert done.finish_reason == "stop"


def test_mistral_max_tokens_never_below_one_when_continuing(fake):
    req = request_for(MODEL, HI, continuation="a b c", continuation_events=3, model_parameters={"max_tokens": 2})
    run_adapter(fake, "mistral", req)
    assert fake.requests(family="mistral")[0]["body"]["max_tokens"] == 1
