"""Sockets for httpcore straight on the event loop's transports, without anyio's layers.

httpcore reaches the network through a pluggable ``AsyncNetworkBackend``; under asyncio its
default goes through anyio, which on every read of a streamed answer enters a cancel scope
(``fail_after``, even with no timeout), maps exceptions through a generator context manager,
yields to the loop once more (a checkpoint), and pauses and resumes the transport's reading.
A worker relaying hundreds of provider streams does that once per token and stream.

Here a connection's protocol keeps what the transport delivers in a buffer: a read returns
buffered data at once, or waits on one future for the next delivery. Reading pauses while a
buffer holds more than ``HIGH_WATER`` bytes that nobody reads (flow control), and an idle
connection's hang-up is known from the protocol's state (``is_readable``), without a ``poll``.
Errors become httpcore's own exception types, as the anyio backend raises them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import socket
import ssl
from collections.abc import Hashable, Iterable
from typing import Any, cast

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

HIGH_WATER = 256 * 1024  # buffered and unread: stop reading from the socket
LOW_WATER = 64 * 1024  # ... until the reader has taken it below this
HELD_MAX = 64 * 1024  # writes held to the end of a loop turn (more goes out at once)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reader: asyncio.Future | None = None  # a read waiting for data
        self.writers: list[asyncio.Future] = []  # writes waiting for the transport to drain
        self.eof = False  # the peer ended its side (or the connection is gone)
        self.error: BaseException | None = None  # why the connection was lost, if it broke
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake_reader()
        for waiter in self.writers:
            if not waiter.done():
                waiter.set_result(None)
        self.writers.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.writers:
            if not waiter.done():
                waiter.set_result(None)
        self.writers.clear()

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None:
            self.reader = None
            if not reader.done():
                reader.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what is buffered (the caller checked there is some)."""
        first = self.chunks.popleft()
        if len(first) > max_bytes:
            self.chunks.appendleft(first[max_bytes:])
            data = first[:max_bytes]
        elif self.chunks and len(first) + len(self.chunks[0]) <= max_bytes:
            parts = [first]
            size = len(first)
            while self.chunks and size + len(self.chunks[0]) <= max_bytes:
                part = self.chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        else:
            data = first
        self.buffered -= len(data)
        if self.read_paused and self.buffered < LOW_WATER and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return data


class AsyncioStream(AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._unsent: list[bytes] = []  # written by _flush at the end of the loop turn
        self._held = 0  # their size

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            if protocol.eof:
                return self._ended()
            waiter = self._loop.create_future()
            protocol.reader = waiter
            try:
                if timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(timeout):
                        await waiter
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data within {timeout:g} s") from None
            finally:
                if protocol.reader is waiter:
                    protocol.reader = None
            if not protocol.chunks:
                return self._ended()
        return protocol.take(max_bytes)

    def _ended(self) -> bytes:
        error = self._protocol.error
        if error is not None:
            raise httpcore.ReadError(str(error) or type(error).__name__) from error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if (protocol.eof and protocol.error is not None) or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        if not protocol.write_paused and self._held + len(buffer) <= HELD_MAX:
            # Held to the end of this loop turn: a request's head and body go out in one write.
            if not self._unsent:
                self._loop.call_soon(self._flush)
            self._unsent.append(buffer)
            self._held += len(buffer)
            return
        self._flush()  # what this turn held goes first
        if self._transport.is_closing():  # the flush failed
            raise httpcore.WriteError(str(protocol.error or "the connection is closed")) from protocol.error
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from exc
        if not protocol.write_paused:
            return
        waiter = self._loop.create_future()
        protocol.writers.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout:g} s") from None
        if protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error)) from protocol.error

    def _flush(self) -> None:
        unsent, self._unsent, self._held = self._unsent, [], 0
        if not unsent or self._transport.is_closing():
            return
        try:
            self._transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))
        except (OSError, RuntimeError) as exc:  # the next read reports it
            self._protocol.connection_lost(exc)
            self._transport.abort()

    def abort(self) -> None:
        """Close at once, from synchronous code (see ``aclose``)."""
        self._transport.abort()

    async def aclose(self) -> None:
        # abort, not close: a TLS transport's close() waits (uvloop: up to 30 s) for the peer's
        # close_notify, and a plain one for its unsent data; a provider stream closed early
        # must stop at once, so that the provider hears the client is gone.
        self._transport.abort()
        await asyncio.sleep(0)  # let the transport release the socket now

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        self._flush()  # nothing held may follow in the clear
        if self._transport.is_closing():  # the flush failed
            raise httpcore.ConnectError(str(self._protocol.error or "the connection is closed"))
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname,
                                                 ssl_handshake_timeout=timeout)
        except (OSError, ssl.SSLError) as exc:  # TimeoutError included
            self._transport.abort()
            if isinstance(exc, TimeoutError) and timeout is not None:
                raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout:g} s") from None
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            # An idle HTTP/1.1 connection is readable only if the server closed it or sent
            # something unasked: either way it cannot be reused.
            return bool(self._protocol.chunks) or self._protocol.eof
        return None


def _connect_kwargs(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Happy eyeballs (RFC 8305) where the loop offers it (asyncio's does; uvloop tries the
    addresses in turn)."""
    # A class is hashable; mypy reads its instances' __hash__ instead (python/mypy#11470).
    return {"happy_eyeballs_delay": 0.25} if _has_happy_eyeballs(cast(Hashable, type(loop))) else {}


@functools.cache
def _has_happy_eyeballs(loop_type: type[asyncio.AbstractEventLoop]) -> bool:
    try:
        return "happy_eyeballs_delay" in inspect.signature(loop_type.create_connection).parameters
    except (TypeError, ValueError):
        return False


class AsyncioBackend(AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[tuple] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await _connect(
            lambda factory: loop.create_connection(
                factory, host, port, local_addr=(local_address, 0) if local_address else None,
                **_connect_kwargs(loop)),
            f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[tuple] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await _connect(lambda factory: loop.create_unix_connection(factory, path), path, timeout,
                              socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(open_connection, where: str, timeout: float | None,
                   socket_options: Iterable[tuple] | None) -> AsyncioStream:
    """``open_connection(protocol_factory)`` (the loop's create_connection for TCP or a Unix
    socket) within ``timeout``, as a stream; errors as httpcore's."""
    protocol = _Protocol()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            transport, _ = await open_connection(lambda: protocol)
    except OSError as exc:  # TimeoutError included: ours, or the kernel's ETIMEDOUT
        raise _connect_error(exc, where, deadline, timeout) from exc
    return _stream(transport, protocol, socket_options)


def _connect_error(exc: OSError, where: str, deadline: asyncio.Timeout, timeout: float | None) -> Exception:
    if deadline.expired():
        return httpcore.ConnectTimeout(f"could not connect to {where} within {timeout:g} s")
    return httpcore.ConnectError(f"could not connect to {where}: {exc or type(exc).__name__}")


def _stream(transport: asyncio.Transport, protocol: _Protocol,
            socket_options: Iterable[tuple] | None) -> AsyncioStream:
    sock: socket.socket | None = transport.get_extra_info("socket")
    try:
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
    except OSError as exc:
        transport.abort()
        raise httpcore.ConnectError(f"could not set a socket option: {exc}") from exc
    return AsyncioStream(transport, protocol)
