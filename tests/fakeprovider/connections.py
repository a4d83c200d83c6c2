"""Each connection's transport, kept by peer address, so a scripted fault can drop a connection
abruptly (``cut_after``), even before a response has started: ASGI alone cannot."""

from __future__ import annotations

import asyncio
import logging

from .asgi import Receive, Scope, wait_disconnect

#: Open connections by the client's (host, port).
TRANSPORTS: dict[tuple[str, int], asyncio.Transport] = {}


def tracking_protocol_class() -> type:
    """uvicorn's HTTP protocol, remembering each connection's transport by peer address."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools missing
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class TrackingProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            if self.client:
                TRANSPORTS[tuple(self.client)] = transport  # type: ignore[index]

        def connection_lost(self, exc):  # type: ignore[no-untyped-def]
            if self.client and TRANSPORTS.get(tuple(self.client)) is self.transport:  # type: ignore[arg-type]
                del TRANSPORTS[tuple(self.client)]  # type: ignore[arg-type]
            super().connection_lost(exc)

    return TrackingProtocol


def transport_of(scope: Scope) -> asyncio.Transport | None:
    client = scope.get("client")
    return TRANSPORTS.get(tuple(client)) if client else None  # type: ignore[arg-type]


class Drop(Exception):
    """Raised to make the server close the connection when no transport is known."""


class QuietDrop(logging.Filter):
    """Keeps a scripted drop out of uvicorn's error log: it is the point, not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, Drop)


async def drop(scope: Scope, receive: Receive) -> None:
    """Close the connection abruptly: no terminal event, no response if none started."""
    transport = transport_of(scope)
    if transport is None:
        raise Drop("dropping connection (scripted cut_after)")
    transport.close()
    await wait_disconnect(receive)
