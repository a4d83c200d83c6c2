"""Server-sent events read straight from a response's bytes.

The same events as ``httpx_sse.EventSource(response).aiter_sse()`` (the WHATWG event-stream
rules: lines end in CRLF, LF or CR; ``data`` lines join with LF; a blank line dispatches; an
event cut off by the end of the stream is dropped), without its three layers of incremental
text decoding, line decoding and per-line field parsing above httpx's own: a streamed answer
comes as one small chunk per token, so each layer is paid once per token and stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from worker.providers.h1 import Body


def byte_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives: raw when the provider did not compress it (the usual case for
    event streams), decoded by httpx otherwise. A body of the worker's own transport is read
    straight from its connection (``h1.Body``), without httpx's generator around it."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        if isinstance(response.stream, Body):
            return aiter(response.stream)
        return response.aiter_raw()
    return response.aiter_bytes()


#: The largest event (and the longest line) accepted. A provider's token event is well under a
#: kilobyte; a stream that never ends its line or its event would otherwise grow without bound
#: (and re-join its buffer on every chunk).
MAX_EVENT_BYTES = 1 << 20


class EventTooLarge(ValueError):
    """An event, or a line, longer than ``MAX_EVENT_BYTES``."""


class ServerSentEvent:
    """One event, with the fields of httpx_sse's (``event`` is "message" when unnamed) as plain
    slots rather than properties: an adapter reads them once per token."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, event: str, data: str, id: str, retry: int | None):
        self.event = event or "message"
        self.data = data
        self.id = id
        self.retry = retry


async def parse_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
    pending = b""
    event = ""
    data: list[str] = []
    size = 0  # bytes of the event so far
    last_id = ""
    retry: int | None = None
    async for chunk in chunks:
        text = pending + chunk if pending else chunk
        if b"\r" in text:
            # A CR at the end may be the first half of a CRLF: keep it for the next chunk.
            held = b"\r" if text.endswith(b"\r") else b""
            if held:
                text = text[:-1]
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            held = b""
        lines = text.split(b"\n")
        pending = lines.pop() + held
        if len(pending) > MAX_EVENT_BYTES:
            raise EventTooLarge(f"a line of more than {MAX_EVENT_BYTES} bytes")
        for line in lines:
            if not line:
                if event or data or last_id or retry is not None:
                    yield ServerSentEvent(event, data[0] if len(data) == 1 else "\n".join(data), last_id, retry)
                event, data, retry, size = "", [], None, 0  # the last event id stays (the spec's rule)
                continue
            if line[0] == 0x3A:  # ":" a comment (a keep-alive, say: not part of any event)
                continue
            size += len(line)
            if size > MAX_EVENT_BYTES:
                raise EventTooLarge(f"an event of more than {MAX_EVENT_BYTES} bytes")
            if line.startswith(b"data: "):  # nearly every line of a provider's stream
                data.append(line[6:].decode("utf-8", "replace"))
                continue
            name, _, raw = line.partition(b":")
            if raw[:1] == b" ":
                raw = raw[1:]
            if name == b"data":
                data.append(raw.decode("utf-8", "replace"))
            elif name == b"event":
                event = raw.decode("utf-8", "replace")
            elif name == b"id":
                if b"\0" not in raw:
                    last_id = raw.decode("utf-8", "replace")
            elif name == b"retry":
                try:
                    retry = int(raw)
                except ValueError:
                    pass
    # A CR held back at the very end ended a line after all: if that line was blank, it
    # dispatches (a field line there would be followed by nothing that dispatches it).
    if pending == b"\r" and (event or data or last_id or retry is not None):
        yield ServerSentEvent(event, "\n".join(data), last_id, retry)


def event_stream(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    return parse_sse(byte_chunks(response))
