"""``Upstream.with_timeouts``: the first item within the first-token limit, each next one within
the idle limit, with one timer per stream; time the consumer spends on an item does not count.
And the check ``Upstream.events`` makes first: the answer must be an event stream.

The streams run on a virtual clock (``tests.helpers.VirtualClockLoop``): an item 0.15 s after
the last one, against a 0.2 s limit, arrives first however busy the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from shared.provider_config import ProviderSettings
from tests.helpers import run_on_virtual_clock
from worker.providers.base import ProviderError
from worker.providers.http import Upstream


def upstream(first: float, idle: float) -> Upstream:
    settings = ProviderSettings(CHATFLEET_PROVIDER_FIRST_TOKEN_TIMEOUT=first, CHATFLEET_PROVIDER_IDLE_TIMEOUT=idle)
    return Upstream(httpx.AsyncClient(), settings, "Prov")


async def items(gaps: list[float], fail: Exception | None = None):
    for i, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield i
    if fail is not None:
        raise fail


def collect(up: Upstream, source, hold: float = 0.0) -> tuple[list[int], Exception | None]:
    got: list[int] = []

    async def go():
        try:
            async for item in up.with_timeouts(source):
                got.append(item)
                await asyncio.sleep(hold)  # the consumer's own work on the item
        except ProviderError as exc:
            return exc
        return None

    return got, run_on_virtual_clock(go())


def test_items_within_their_limits_all_arrive():
    assert collect(upstream(0.5, 0.2), items([0.3, 0.1, 0.15, 0.1])) == ([0, 1, 2, 3], None)


def test_a_slow_first_item_hits_the_first_token_limit():
    got, error = collect(upstream(0.2, 5), items([0.5, 0.0]))
    assert got == [] and error.code == "upstream_timeout" and error.retryable
    assert error.message == "Prov sent no first token within 0.2 s"


def test_a_stall_after_a_long_first_limit_hits_the_shorter_idle_limit():
    got, error = collect(upstream(30, 0.2), items([0.0, 0.05, 0.6, 0.0]))
    assert got == [0, 1] and error.message == "Prov sent no next token within 0.2 s"


def test_time_the_consumer_holds_an_item_does_not_count():
    # Each item takes the consumer 0.3 s, longer than the idle limit; the source itself is quick.
    assert collect(upstream(0.2, 0.2), items([0.0, 0.05, 0.05]), hold=0.3) == ([0, 1, 2], None)


def test_transport_failures_become_retryable_stream_cuts():
    got, error = collect(upstream(1, 1), items([0.0], fail=httpx.ReadError("reset by peer")))
    assert got == [0] and error.code == "stream_cut" and error.retryable


def watch_timers(loop: asyncio.AbstractEventLoop) -> Callable[[], list[asyncio.TimerHandle]]:
    """Record the timers set on ``loop`` from now on; the returned function lists those still
    pending (neither cancelled nor due yet)."""
    made: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def recorded(when, callback, *args, **kwargs):
        handle = call_at(when, callback, *args, **kwargs)
        made.append(handle)
        return handle

    loop.call_at = recorded
    return lambda: [h for h in made if not h.cancelled() and h.when() > loop.time()]


def test_a_cancel_from_outside_stays_a_cancel_and_no_timer_is_left():
    up = upstream(0.3, 0.3)

    async def go():
        pending = watch_timers(asyncio.get_running_loop())
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        assert pending(), "the stream's timer is set while it waits"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pending()

    async def consume():
        async for _ in up.with_timeouts(items([0.0, 5.0])):
            pass

    assert run_on_virtual_clock(go()) == []


def test_a_generator_left_suspended_holds_no_timer():
    up = upstream(0.2, 0.2)

    async def go():
        pending = watch_timers(asyncio.get_running_loop())
        stream = up.with_timeouts(items([0.0, 0.0]))
        assert await anext(stream) == 0
        await asyncio.sleep(0.5)  # the timer fires meanwhile and is not set again
        left = pending()
        assert await anext(stream) == 1  # resumed later, the next item is still taken
        await stream.aclose()
        return left

    assert run_on_virtual_clock(go()) == []


def test_an_answer_that_is_not_an_event_stream_is_refused_as_retryable():
    up = upstream(1, 1)
    for content_type in ("application/json", ""):
        response = httpx.Response(200, headers={"content-type": content_type} if content_type else {},
                                  content=b'{"error": "oops"}')
        with pytest.raises(ProviderError) as caught:
            up.events(response)
        assert caught.value.code == "upstream_invalid" and caught.value.retryable
        assert "not an event stream" in caught.value.message
    # parameters and case do not matter
    ok = httpx.Response(200, headers={"content-type": "Text/Event-Stream; charset=utf-8"}, content=b"")
    assert up.events(ok) is not None


def test_an_event_too_large_is_a_retryable_invalid_answer():
    from worker.providers.sse import EventTooLarge

    got, err = collect(upstream(1, 1), items([0, 0], fail=EventTooLarge("an event of more than 1048576 bytes")))
    assert got == [0, 1]
    assert (err.code, err.retryable) == ("upstream_invalid", True)
    assert "more than 1048576 bytes" in err.message
