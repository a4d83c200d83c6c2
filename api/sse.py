"""Server-sent event framing."""

from __future__ import annotations

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
KEEPALIVE = b": ping\n\n"


def sse(data: str, event: str | None = None, event_id: int | None = None) -> bytes:
    head = ""
    if event is not None:
        head += f"event: {event}\n"
    if event_id is not None:
        head += f"id: {event_id}\n"
    return f"{head}data: {data}\n\n".encode()
