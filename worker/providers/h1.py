"""HTTP/1.1 for the provider calls: keep-alive connections on the loop's transports (``netio``),
each response parsed by httptools (llhttp, the parser of Node.js, in C).

httpx's own transport (httpcore's pool and h11) passes every chunk of a streamed answer through
six layers of async generators and a pure-Python parser's state machine, and every call
through a pool whose work grows with its connections. A worker relaying a thousand streams does
that once per token and stream. Here a response's body is one async generator over the
connection's reads, each read fed to llhttp, and the pool is a stack of idle connections per
origin: taking one or giving it back is O(1).

What httpcore does and this does too: one request at a time per connection; a connection kept
only when its response was read to the end and both sides allow it (``Connection: close``,
HTTP/1.0, a body delimited by the connection's end); an idle connection the server has closed
(or written to unasked) is never reused; idle connections expire after ``keepalive_expiry``;
at most ``max_connections`` open (beyond: wait up to the pool timeout) and
``max_keepalive_connections`` idle. Requests are never sent twice: a kept connection that
breaks before its answer fails the call, as with httpcore. Errors are httpx's own types.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httptools
import httpx

from worker.providers.netio import AsyncioBackend, AsyncioStream

READ_SIZE = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# h11's rule for a field value: visible characters (and obs-text), with blanks inside only.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?")
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.WriteError, httpx.WriteError),
)

Origin = tuple[bytes, str, int]


def _httpx_error(exc: Exception, request: httpx.Request) -> Exception:
    """httpx's exception for one of the network layer's (httpcore's types), or ``exc`` itself."""
    for theirs, ours in _ERRORS:
        if isinstance(exc, theirs):
            return ours(str(exc), request=request)
    if isinstance(exc, httptools.HttpParserError):
        return httpx.RemoteProtocolError(f"the server's answer is not valid HTTP/1.1: {exc}", request=request)
    return exc


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers. A header that is not valid HTTP is refused before anything
    is sent, naming the header, never its value (it may be a credential)."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if _TOKEN.fullmatch(name) is None:
            raise httpx.LocalProtocolError("a header name is not valid HTTP", request=request)
        if _FIELD_VALUE.fullmatch(value) is None:
            raise httpx.LocalProtocolError(f"the value of header {name.decode('ascii')!r} is not valid HTTP",
                                           request=request)
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Connection:
    """One connection and the parse of the response now on it (httptools' callbacks)."""

    __slots__ = (
        "body",
        "broken",
        "complete",
        "headers",
        "heads_done",
        "idle_since",
        "keep_alive",
        "origin",
        "parser",
        "read_timeout",
        "reason",
        "status",
        "stream",
        "until_eof",
    )

    def __init__(self, stream: AsyncioStream, origin: Origin):
        self.stream = stream
        self.origin = origin
        self.idle_since = 0.0
        self.broken = False  # anything left unread, or the answer cut: never reused
        self.read_timeout: float | None = None  # for each read (the fleet's calls: none, see transport.py)

    def expect_response(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.heads_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.until_eof = False  # the body ends with the connection
        self.keep_alive = False

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer, unasked for, in the same read: never reused
            self.broken = True

    def on_status(self, reason: bytes) -> None:
        if not self.complete:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value.strip(b" \t")))  # llhttp keeps trailing blanks; h11 does not

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): the real one follows
            self.headers, self.reason = [], b""
            return
        self.status, self.heads_done = status, True
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        self.until_eof = not framed and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.heads_done or self.complete:
            return  # the interim answer's end
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        if self.complete:  # bytes after the answer, unasked: the connection is not reusable
            self.broken = True
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True
            raise httptools.HttpParserError("the server switched protocols") from None
        except httptools.HttpParserError:
            if not self.complete:
                raise
            # llhttp goes on after the answer's end, and refuses what follows it in the same
            # read ("Data after Connection: close", garbage): the answer is whole all the same,
            # as h11 would give it; only the connection is not reused.
            self.broken = True

    def reusable(self, now: float, expiry: float) -> bool:
        return not self.broken and now - self.idle_since < expiry and not self.stream.get_extra_info("is_readable")


class H1Transport(httpx.AsyncBaseTransport):
    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None):
        self._tls = ssl_context or httpx.create_ssl_context()
        self._backend = AsyncioBackend()
        self._max_open = limits.max_connections if limits.max_connections is not None else 1 << 30
        self._max_idle = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else 1 << 30
        self._expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
        self._idle: dict[Origin, collections.deque[Connection]] = {}
        self._idle_count = 0
        self.open = 0  # connections open, or being opened
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False

    @property
    def idle(self) -> int:
        return self._idle_count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"the URL's scheme must be http or https, not {url.scheme!r}",
                                            request=request)
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = (scheme, url.host, url.port or (443 if scheme == b"https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        if request.method == "HEAD":
            raise httpx.UnsupportedProtocol("this transport makes no HEAD requests (a provider call never is one)",
                                            request=request)
        head = request_head(request)
        try:
            connection = await self._connection(origin, timeouts)
        except Exception as exc:
            raise _httpx_error(exc, request) from exc
        connection.read_timeout = timeouts.get("read")
        try:
            await self._send(connection, head, request, timeouts.get("write"))
            await self._read_head(connection)
        except BaseException as exc:
            self._drop(connection)
            if isinstance(exc, Exception):
                raise _httpx_error(exc, request) from exc
            raise
        return httpx.Response(
            connection.status, headers=connection.headers, stream=Body(self, connection, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason,
                        "network_stream": connection.stream},
        )

    async def _send(self, connection: Connection, head: bytes, request: httpx.Request,
                    timeout: float | None) -> None:
        connection.expect_response()
        stream = connection.stream
        try:
            content = request.content
        except httpx.RequestNotRead:  # a streamed body
            await stream.write(head, timeout)
            chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
            async for part in request.stream:  # type: ignore[union-attr]
                if part:
                    await stream.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part, timeout)
            if chunked:
                await stream.write(b"0\r\n\r\n", timeout)
            return
        await stream.write(head + content if len(content) < 16384 else head, timeout)
        if len(content) >= 16384:
            await stream.write(content, timeout)

    async def _read_head(self, connection: Connection) -> None:
        stream = connection.stream
        while not connection.heads_done:
            data = await stream.read(READ_SIZE, connection.read_timeout)
            if not data:
                raise httpx.RemoteProtocolError("the server closed the connection without sending an answer")
            connection.feed(data)

    async def _connection(self, origin: Origin, timeouts: dict[str, Any]) -> Connection:
        loop = asyncio.get_running_loop()
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else loop.time() + pool_timeout  # one bound for all the waits
        while True:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()  # the newest: the one most likely still open at the far end
                self._idle_count -= 1
                if connection.reusable(loop.time(), self._expiry):
                    return connection
                self._drop(connection)
            if self.open >= self._max_open and self._idle_count:
                self._drop_oldest_idle()
            if self.open < self._max_open:
                break
            waiter = loop.create_future()
            self._waiting.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:  # timed out or cancelled
                if waiter.done() and not waiter.cancelled():
                    # Woken, then gone before taking the place: the wake-up goes to the next in
                    # line, or the place it was for would go to nobody.
                    self._wake()
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout(f"no connection free within {pool_timeout} s") from None
                raise
        self.open += 1
        scheme, host, port = origin
        connect = timeouts.get("connect")
        try:
            stream: Any = await self._backend.connect_tcp(host, port, timeout=connect)
            if scheme == b"https":
                stream = await stream.start_tls(self._tls, server_hostname=host, timeout=connect)
        except BaseException:
            self.open -= 1
            self._wake()
            raise
        return Connection(stream, origin)

    def release(self, connection: Connection) -> None:
        """A response read to its end and closed: its connection is kept for the next call, if
        it can be."""
        if self._closed or connection.broken or not connection.keep_alive or self._idle_count >= self._max_idle:
            self._drop(connection)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.origin, collections.deque()).append(connection)
        self._idle_count += 1
        self._wake()

    def _drop(self, connection: Connection) -> None:
        connection.broken = True
        connection.stream.abort()
        self.open -= 1
        self._wake()

    def _drop_oldest_idle(self) -> None:
        oldest = min((d for d in self._idle.values() if d), key=lambda d: d[0].idle_since)
        self._idle_count -= 1
        self._drop(oldest.popleft())

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._idle_count -= 1
                self._drop(idle.pop())
        self._idle.clear()


class Body(httpx.AsyncByteStream):
    """A response's body as the connection delivers it (chunked framing undone): one bytes per
    read of the socket. Closed having read it all, the connection goes back to the pool."""

    __slots__ = ("_connection", "_request", "_transport")

    def __init__(self, transport: H1Transport, connection: Connection, request: httpx.Request):
        self._transport: H1Transport | None = transport
        self._connection = connection
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        stream = connection.stream
        try:
            while True:
                body = connection.body
                if body:
                    connection.body = []
                    yield body[0] if len(body) == 1 else b"".join(body)
                if connection.complete or self._transport is None:
                    return
                data = await stream.read(READ_SIZE, connection.read_timeout)
                if data:
                    connection.feed(data)
                elif connection.until_eof:  # the body ends with the connection
                    connection.complete, connection.keep_alive = True, False
                else:
                    raise httpx.RemoteProtocolError("the server closed the connection before the end of its answer")
        except Exception as exc:
            connection.broken = True
            mapped = _httpx_error(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        connection = self._connection
        if connection.complete and not connection.body:
            transport.release(connection)
        else:
            transport._drop(connection)
