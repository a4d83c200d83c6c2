"""A transport wrapper that records what is written through it (how many writes, and what)."""

from __future__ import annotations


class RecordingTransport:
    def __init__(self, transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class FailingTransport(RecordingTransport):
    """A transport whose every write raises (a socket gone under the event loop's feet)."""

    def write(self, data) -> None:
        raise OSError("the socket is gone")
