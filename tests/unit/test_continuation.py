"""How a call continues after delivered text (worker/providers/continuation.py)."""

import pytest

from shared.catalog import get_catalog
from shared.jobspec import JobSpec, Sampling
from worker.providers.base import GenerationRequest, ProviderError
from worker.providers.continuation import EchoStripper, PrefixSkipper, WhitespaceSkipper, one_call, split_prefill


def job(max_tokens: int = 4096, prompt: str | None = None) -> JobSpec:
    return JobSpec(model="gpt-4o", messages=(), params=Sampling(temperature=0.2, max_tokens=max_tokens),
                   prompt_bytes=0, prompt=prompt)


def request(max_tokens=4096, continuation="", events=0) -> GenerationRequest:
    return GenerationRequest(model=get_catalog().get("gpt-4o"), job=job(max_tokens),
                             continuation=continuation, continuation_events=events)


def test_tokens_left_subtracts_what_was_delivered_and_never_goes_below_one():
    assert request(10).tokens_left() == 10
    assert request(10, "a b c", 3).tokens_left() == 7
    assert request(2, "a b c", 3).tokens_left() == 1
    assert request(4096, "a b", 2).tokens_left() == 4094
    assert request(10, "a b c", 3).tokens_left(delivered=5) == 5  # counted exactly by the adapter
    assert request(10, "a b c", 3).max_tokens == 10  # the whole bound, for a call that regenerates


def test_one_call_moves_the_continued_text_from_prompt_to_completion():
    done = one_call(request(4096, "a b", 2), "length", 12, 3)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 10, 5)
    kept = one_call(request(4096, "a b", 2), "stop", 12, 3, prefilled=False)  # nothing was sent back
    assert (kept.prompt_tokens, kept.completion_tokens) == (12, 5)
    assert one_call(request(4096, "a b", 20), "stop", 5, 1).prompt_tokens == 0
    fresh = one_call(request(), "stop", 10, 5)
    assert (fresh.prompt_tokens, fresh.completion_tokens) == (10, 5)


def test_split_prefill_holds_back_trailing_whitespace():
    assert split_prefill("a b \n ") == ("a b", " \n ")
    assert split_prefill("   ") == ("", "   ")
    assert split_prefill("") == ("", "")


def test_whitespace_skipper_drops_only_the_held_back_whitespace():
    def run(pending, pieces):
        skip = WhitespaceSkipper(pending)
        return [skip.feed(p) for p in pieces]

    assert run(" ", [" world", " again"]) == ["world", " again"]
    assert run(" ", ["world"]) == ["world"]                  # no space: the delivered one separates
    assert run("\n\n", ["\n", "\nHi"]) == ["", "Hi"]          # matched across deltas
    assert run("\n\n", ["\n", "Hi", "\n\n"]) == ["", "Hi", "\n\n"]
    assert run(" ", ["\n\nHi"]) == ["\n\nHi"]                # different whitespace passes unchanged
    assert run(" ", ["  two"]) == [" two"]                   # only as much as was held back
    assert run("\n", ["\n\nb"]) == ["\nb"]                   # the model's extra newline is kept
    assert run("  ", [" ", " x"]) == ["", "x"]
    assert run("", [" x"]) == [" x"]


def test_echo_stripper_holds_only_while_the_text_may_be_the_echo():
    echo = EchoStripper("Hello wor")
    assert echo.feed("Hel") == "" and echo.feed("lo w") == "" and echo.feed("orld!") == "ld!"
    assert echo.feed(" more") == " more"
    other = EchoStripper("Hello")
    assert other.feed("He") == "" and other.feed("y there") == "Hey there"
    short = EchoStripper("Hello there")
    assert short.feed("Hello") == "" and short.flush() == "Hello"
    assert EchoStripper("").feed("x") == "x"


def test_prefix_skipper_drops_the_delivered_prefix_and_stops_on_a_departure():
    skip = PrefixSkipper("tok0 tok1", "OpenAI")
    assert [skip.feed(t) for t in ("tok0", " tok", "1 tok2", " tok3")] == ["", "", " tok2", " tok3"]
    other = PrefixSkipper("tok0 tok1", "OpenAI")
    assert other.feed("tok0") == ""
    with pytest.raises(ProviderError) as exc:
        other.feed(" else")
    assert exc.value.code == "stream_interrupted" and not exc.value.retryable


def test_the_local_model_keeps_no_prompt_cache_between_calls():
    from shared.settings import Settings
    from worker.providers.local import LocalProvider

    spec = get_catalog().get("smollm2-135m-instruct")
    req = GenerationRequest(model=spec, job=job(100, "p"), account_id="acct_a")
    assert LocalProvider(Settings())._body(req, "p", 5)["cache_prompt"] is False
