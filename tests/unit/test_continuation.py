"""How a call continues after delivered text (worker/providers/continuation.py)."""

import pytest

from shared.catalog import get_catalog
from worker.providers.base import GenerationRequest, ProviderError
from worker.providers.continuation import (
    EchoStripper, PrefixSkipper, WhitespaceSkipper, max_tokens_left, one_call, split_prefill,
)


def request(max_tokens=None, continuation="", events=0) -> GenerationRequest:
    params = {} if max_tokens is None else {"max_tokens": max_tokens}
    return GenerationRequest(spec=get_catalog().get("gpt-4o"), messages=[], prompt=None, params=params,
                             continuation=continuation, continuation_events=events)


def test_max_tokens_left_subtracts_what_was_delivered_and_never_goes_below_one():
    assert max_tokens_left(request(10)) == 10
    assert max_tokens_left(request(10, "a b c", 3)) == 7
    assert max_tokens_left(request(2, "a b c", 3)) == 1
    assert max_tokens_left(request()) is None
    assert max_tokens_left(request(None, "a b", 2), default=4096) == 4094


def test_one_call_moves_the_continued_text_from_prompt_to_completion():
    done = one_call(request(None, "a b", 2), "length", 12, 3)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 10, 5)
    kept = one_call(request(None, "a b", 2), "stop", 12, 3, prefilled=False)  # nothing was sent back
    assert (kept.prompt_tokens, kept.completion_tokens) == (12, 5)
    assert one_call(request(None, "a b", 20), "stop", 5, 1).prompt_tokens == 0
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
    req = GenerationRequest(spec=spec, messages=[], prompt="p", params={}, account_id="acct_a")
    assert LocalProvider(Settings())._body(req, "p", 5)["cache_prompt"] is False
