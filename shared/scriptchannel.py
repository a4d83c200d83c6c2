"""Lua script calls pipelined on one connection of their own (the worker's job scripts, and
the API's job create).

Every job makes a handful of script calls (claim, admission, publishes, finish), and every
relayed token is part of a publish. Through redis-py's asyncio client each call costs ~120 µs
of CPU alone and ~50 µs with others in flight (borrowing a connection from the pool, the retry
and observability layers, a timeout per send): more than the script takes inside Redis. Here
every call is hiredis-packed bytes on one connection and one future answered, in order, by the
protocol's reader. The calls made in one turn of the event loop go out in one write (one
system call, one wake-up of Redis) at the end of that turn, and their replies come back in one
read; a call made ``at_once`` (the scripts that publish a job's events, on their way to
subscribers) is written at once, with what the turn held before it.

Only for ``redis://`` and ``unix://`` URLs (``rediss://`` keeps redis-py's TLS handling);
anything else of the process still uses redis-py. Errors are redis-py's: the class of an error
reply is redis-py's (``NoScriptError`` is answered by loading the script and calling again);
when the connection is lost every call in flight fails with ``ConnectionError`` and is made
again on a new connection, as redis-py's clients retry (10 more times, the waits doubling up
to 1 s: a Redis back within ~2 s is not noticed; 10 s at most in all); so callers handle them
as before.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import hiredis
from redis import exceptions as errors
from redis.asyncio.client import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.connection import parse_url as _parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError
from redis.typing import EncodableT, KeyT

T = TypeVar("T")

# hiredis's stub declares a 1-tuple (``Tuple[X]``) and no return; it packs a command of any
# length into the bytes of one RESP request.
pack_command = cast(Callable[[tuple[str | int | float | bytes | memoryview, ...]], bytes], hiredis.pack_command)
# redis-py's URL parser is untyped: the connection options a URL names.
parse_url = cast(Callable[[str], dict[str, Any]], _parse_url)

# A connection that went silent (a dropped NAT entry, a failover) is found out as redis-py's
# connections find it: keepalive probes after 30 s idle, 5 s apart, 3 of them; and sent data
# left unacknowledged for 45 s ends it too (the probes only run on an idle connection).
TCP_OPTIONS = {getattr(socket, name): value for name, value in (
    ("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 45_000))
    if hasattr(socket, name)}


# An error reply's class, by its code, as redis-py's parsers map them: what the callers of a
# script handle (NOSCRIPT: load and call again; LOADING, a refused connection: retried as
# connection errors) and what a Redis Cluster answers (MOVED, ASK, CROSSSLOT, ...).
ERROR_CODES: dict[str, type[RedisError]] = {
    "NOSCRIPT": errors.NoScriptError, "LOADING": errors.BusyLoadingError, "READONLY": errors.ReadOnlyError,
    "OOM": errors.OutOfMemoryError, "NOPERM": errors.NoPermissionError, "EXECABORT": errors.ExecAbortError,
    "WRONGPASS": errors.AuthenticationError, "NOAUTH": errors.AuthenticationError,
    "MOVED": errors.MovedError, "ASK": errors.AskError, "TRYAGAIN": errors.TryAgainError,
    "CLUSTERDOWN": errors.ClusterDownError, "CROSSSLOT": errors.ClusterCrossSlotError,
    "MASTERDOWN": errors.MasterDownError,
}
# Replies with the generic code ERR that mean something more.
ERR_MESSAGES: dict[str, type[RedisError]] = {
    "max number of clients reached": RedisConnectionError,
    "invalid password": errors.AuthenticationError,
}


def _error(reply: Exception) -> RedisError:
    """The exception redis-py raises for this error reply: the code prefix decides, the message
    follows it (``NOSCRIPT No matching script`` is a NoScriptError("No matching script"))."""
    text = str(reply)
    code, _, message = text.partition(" ")
    if code == "ERR":
        return ERR_MESSAGES.get(message, ResponseError)(message)
    if code in ERROR_CODES:
        return ERROR_CODES[code](message)
    return ResponseError(text)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=Exception, encoding="utf-8")
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.unsent: list[bytes] = []  # this loop turn's calls, written together by _flush

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's (create_connection, create_unix_connection): a Transport.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in TCP_OPTIONS.items():
                sock.setsockopt(socket.IPPROTO_TCP, option, value)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except UnicodeDecodeError as exc:  # one reply that is not text: its caller's error only
                reply = exc
            except Exception as exc:  # noqa: BLE001 - not Redis speaking: nothing after this can be trusted
                self._abort(f"unreadable reply from Redis: {exc}")
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for ("max number of clients", say)
                self._abort(f"Redis sent what no call asked for: {reply}")
                return
            future = self.waiting.popleft()
            if future.done():  # its caller gave up (cancelled); the reply was still its own
                continue
            if isinstance(reply, UnicodeDecodeError):
                future.set_exception(reply)
            elif isinstance(reply, Exception):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def _abort(self, message: str) -> None:
        self._fail(message)
        assert self.transport is not None  # replies, and writes, come only once connected
        self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(f"connection to Redis lost: {exc or 'closed'}")

    def _fail(self, message: str) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError(message)
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(message))

    def send(self, packed: bytes, at_once: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost is not None:
            future.set_exception(RedisConnectionError(str(self.lost)))
            return future
        if not self.unsent and not at_once:
            loop.call_soon(self._flush)
        self.unsent.append(packed)
        self.waiting.append(future)
        if at_once:
            self._flush()
        return future

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        assert self.transport is not None  # calls are sent only on a made connection
        # Lost or closing: the calls' futures fail with the connection (connection_lost).
        if unsent and self.lost is None and not self.transport.is_closing():
            try:
                self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))
            except Exception as exc:  # noqa: BLE001 - what was sent before may still be answered: end it all
                self._abort(f"cannot write to Redis: {exc}")


class ScriptChannel:
    """EVALSHA (and SCRIPT LOAD) on one pipelined connection, opened on first use."""

    def __init__(self, url: str, connect_timeout: float = 10.0):
        self.options = parse_url(url)
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def for_url(cls, url: str) -> ScriptChannel | None:
        """A channel to the Redis at ``url``; None where the URL needs redis-py (TLS)."""
        return cls(url) if url.startswith(("redis://", "unix://")) else None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        # Shielded: one caller cancelled must not cancel the connect the others wait for.
        return await asyncio.shield(self._connecting)

    def _connected(self, connecting: asyncio.Future[_Protocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved here: every caller may have gone

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        protocol = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, options.get("host", "localhost"), options.get("port", 6379))
                if options.get("password"):
                    auth = (options["username"], options["password"]) if options.get("username") \
                        else (options["password"],)
                    await protocol.send(pack_command(("AUTH", *auth)))
                if options.get("db"):
                    await protocol.send(pack_command(("SELECT", options["db"])))
        except (OSError, TimeoutError, RedisError) as exc:  # RedisError: AUTH or SELECT refused
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._protocol = protocol
        return protocol

    async def command(self, *args: Any, at_once: bool = False) -> Any:
        """A command (not a script) on the channel, made again on a new connection when the
        connection is lost, as script calls are (the caller makes sure that is harmless)."""
        try:
            return await self.call(*args, at_once=at_once)
        except RedisConnectionError:
            return await _with_retries(lambda: self.call(*args, at_once=at_once))

    async def commands(self, *commands: Sequence[Any]) -> list[Any]:
        """Several commands (not scripts) sent together, in one write, and their replies in
        order; made again on a new connection when it is lost, as ``command`` is. Cheaper than a
        redis-py pipeline of them: no command objects, no response callbacks."""
        try:
            return await self._calls(commands)
        except RedisConnectionError:
            return await _with_retries(lambda: self._calls(commands))

    async def _calls(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        try:
            packed = [pack_command(tuple(args)) for args in commands]
        except TypeError as exc:  # None, a bool: what redis-py refuses too
            raise DataError(f"cannot send these commands: {exc}") from None
        protocol = await self._connection()
        return list(await asyncio.gather(*(protocol.send(one) for one in packed)))

    async def call(self, *args: Any, at_once: bool = False) -> Any:
        try:
            packed = pack_command(args)
        except TypeError as exc:  # None, a bool: what redis-py refuses too
            raise DataError(f"cannot send {args[0]} with these arguments: {exc}") from None
        protocol = await self._connection()
        return await protocol.send(packed, at_once)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class ChannelScript:
    """A registered script called through a ``ScriptChannel``; with ``client=`` (a pipeline),
    through redis-py as before. ``at_once``: its calls are not held to the end of the loop turn."""

    def __init__(self, channel: ScriptChannel, registered: AsyncScript, at_once: bool = False):
        self.channel = channel
        self.registered = registered  # redis-py's AsyncScript: the source, its sha, the pipelines
        self.at_once = at_once

    async def __call__(self, keys: Sequence[KeyT] = (), args: Iterable[EncodableT] = (),
                       client: Redis | RedisCluster | None = None) -> Any:
        if client is not None:
            return await self.registered(keys=keys, args=args, client=client)
        keys, args = list(keys), list(args)
        try:
            return await self._run(keys, args)
        except RedisConnectionError:
            # Again on a new connection, as redis-py's client retries (the scripts are written
            # for it: a call that ran before its reply was lost, made again, changes nothing).
            return await _with_retries(lambda: self._run(keys, args))

    async def _run(self, keys: list[KeyT], args: list[EncodableT]) -> Any:
        try:
            return await self.channel.call("EVALSHA", self.registered.sha, len(keys), *keys, *args,
                                           at_once=self.at_once)
        except NoScriptError:  # a restarted or flushed Redis: load it again
            await self.channel.call("SCRIPT", "LOAD", self.registered.script, at_once=self.at_once)
            return await self.channel.call("EVALSHA", self.registered.sha, len(keys), *keys, *args,
                                           at_once=self.at_once)


RETRY_SECONDS = 10.0  # the retries' time in all (the waits between them add up to 2.1-4.3 s)


async def _with_retries(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` made again after a lost connection, as redis-py's clients retry; bounded in
    all: each try may wait for a connect that never answers."""
    try:
        async with asyncio.timeout(RETRY_SECONDS):
            return await _retry().call_with_retry(attempt, _retrying)
    except TimeoutError:
        raise RedisConnectionError(f"no answer from Redis within {RETRY_SECONDS:g} s") from None


def _retry() -> Retry:
    """As redis-py's clients' default: 10 more tries, the waits doubling from 10-20 ms up to 1 s
    (redis-py's jitter can make them all near 0: this one keeps at least half, so that retrying
    lasts 2.1-4.3 s). The first one here (in ``ChannelScript.__call__``) has no wait."""
    return Retry(EqualJitterBackoff(cap=1.0, base=0.01), 9, supported_errors=(RedisConnectionError,))


async def _retrying(error: Exception) -> None:
    """Called by ``Retry`` after each failed try: the next try reconnects by itself."""
