"""The worker's event-stream parser (worker/providers/sse.py) gives the events httpx-sse gives,
however the stream is cut into chunks."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from httpx_sse import EventSource

from worker.providers.sse import MAX_EVENT_BYTES, EventTooLarge, parse_sse

STREAMS = {
    "openai": b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: {"choices":[]}\n\ndata: [DONE]\n\n',
    "anthropic": (b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
                  b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
                  b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"h\\u00e9\"}}\n\n"),
    "crlf": b"data: one\r\n\r\ndata: two\r\nid: 7\r\n\r\n",
    "cr only": b"data: a\r\rdata: b\r\r",
    "multi-line data and no space": b"data:first\ndata: second\n\ndata:  two spaces\n\n",
    "comments and unknown fields": b": keep-alive\n\nfoo: bar\ndata: x\n\n:\n\n",
    "id without data, then data": b"id: 42\n\ndata: after\n\n",
    "id with NUL is ignored": b"id: a\0b\ndata: y\n\n",
    "retry": b"retry: 1500\ndata: r\n\nretry: soon\ndata: s\n\n",
    "event only": b"event: ping\n\n",
    "utf-8 split across chunks": "data: naïve ☃ 日本\n\n".encode(),
    "cut off at the end": b"data: complete\n\ndata: never ends",
    "leading blank lines": b"\n\n\ndata: z\n\n",
    "field line cut by a final CR": b"data: done\n\ndata: x\r",
    "final CR ends the event": b"data: e\r\n\r",
}


def reference(raw: bytes) -> list[tuple]:
    """What httpx-sse's public reader gives for the same body."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [(sse.event, sse.data, sse.id, sse.retry) for sse in EventSource(response).iter_sse()]


def parsed(chunks: list[bytes]) -> list[tuple]:
    async def source():
        for c in chunks:
            yield c

    async def go():
        return [(e.event, e.data, e.id, e.retry) async for e in parse_sse(source())]

    return asyncio.run(go())


@pytest.mark.parametrize("name", list(STREAMS))
def test_every_split_gives_the_reference_events(name):
    raw = STREAMS[name]
    expected = reference(raw)
    assert expected or name == "cut off at the end"
    assert parsed([raw]) == expected
    assert parsed([raw[i:i + 1] for i in range(len(raw))]) == expected  # a byte at a time
    for cut in range(1, len(raw)):
        assert parsed([raw[:cut], raw[cut:]]) == expected, cut


def test_an_event_up_to_the_limit_is_read_and_one_beyond_it_is_refused():
    chunk = 64 * 1024
    # Exactly the limit: one data line of MAX_EVENT_BYTES bytes, "data: " included, in pieces.
    line = b"data: " + b"x" * (MAX_EVENT_BYTES - 6)
    pieces = [line[i:i + chunk] for i in range(0, len(line), chunk)] + [b"\n\n"]
    (event,) = parsed(pieces)
    assert len(event[1]) == MAX_EVENT_BYTES - 6

    never_ends = [b"data: "] + [b"y" * chunk] * (MAX_EVENT_BYTES // chunk + 1)  # no line end, ever
    with pytest.raises(EventTooLarge, match="line"):
        parsed(never_ends)

    many_lines = [b"data: " + b"z" * 1000 + b"\n"] * (MAX_EVENT_BYTES // 1000 + 1)  # no blank line
    with pytest.raises(EventTooLarge, match="event"):
        parsed(many_lines)
    # Many small events add up to far more than the limit, and pass; so do keep-alive comments
    # between the lines of one event.
    assert len(parsed([b"data: " + b"w" * 1000 + b"\n\n"] * 2000)) == 2000
    (kept_alive,) = parsed([b"data: a\n"] + [b": " + b"k" * 1000 + b"\n"] * 2000 + [b"data: b\n\n"])
    assert kept_alive[1] == "a\nb"
