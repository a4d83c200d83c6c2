"""The HTTP client every adapter of a worker process shares: its pools, its sockets, no cookies.

Connections run on the loop's own transports (``netio.py``) instead of anyio's: on the hot path
that is 14-27 % less worker CPU per relayed token and, at 1,000 streams, 875 calls open together
instead of 594 (bench/README.md, "Private hooks"). httpx takes no network backend for its own
transport, so ``asyncio_transport`` gives its pool one; it is the one private hook of httpx here
(``transport._pool``), checked before it is used.
"""

from __future__ import annotations

import http.cookiejar
import logging
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import Any, cast

import httpcore
import httpx

from shared.provider_config import ProviderSettings
from worker.providers.netio import AsyncioBackend

log = logging.getLogger(__name__)


MAX_CONNECTIONS = 2000
MAX_KEEPALIVE = 512
POOL_SHARDS = 16


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several connection pools behind one client; each call goes to the least busy one.

    httpcore's pool does work linear in its connections on every request and every release
    (it checks each idle connection's socket for a hang-up), so one pool holding the hundreds
    of streams a worker keeps open to a provider costs milliseconds of CPU per call. Split into
    ``shards`` pools, each call pays for a fraction of them. Ties go to the first pool, so a
    worker with little traffic keeps reusing the same few connections."""

    def __init__(self, shards: int, limits: httpx.Limits):
        # Bounded limits (``client_limits``), split between the shards.
        assert limits.max_connections is not None and limits.max_keepalive_connections is not None
        per_shard = httpx.Limits(
            max_connections=-(-limits.max_connections // shards),
            max_keepalive_connections=-(-limits.max_keepalive_connections // shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        tls = httpx.create_ssl_context()  # one for all shards: loading the CA bundle is not free
        self.shards = [asyncio_transport(per_shard, tls) for _ in range(shards)]
        self.busy = [0] * shards  # calls in flight per shard, until their response is closed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self.busy.index(min(self.busy))
        self.busy[index] += 1
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException:
            self.busy[index] -= 1
            raise
        # An async transport's answer: its body streams asynchronously.
        response.stream = _Released(cast(httpx.AsyncByteStream, response.stream), self.busy, index)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, busy: list[int], index: int):
        self._stream = stream
        self._busy: list[int] | None = busy
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._busy is not None:
            self._busy[self._index] -= 1
            self._busy = None
        await self._stream.aclose()


def asyncio_transport(limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncHTTPTransport:
    """httpx's transport, its connections on the loop's own transports (``netio``) rather than
    through anyio, which costs a cancel scope, an extra loop turn and a pause/resume of the
    socket per read of a streamed answer, that is per token. httpx takes no network backend,
    so the pool it built is replaced by the same one with this backend."""
    ssl_context = ssl_context or httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits, http2=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        # An httpx that keeps its pool elsewhere: its own pool, on anyio, still works.
        log.warning("this httpx keeps no httpcore pool where expected; provider calls go through anyio")
        return transport
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True, http2=False,
        network_backend=AsyncioBackend(),
    )
    return transport


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing. One client serves every account of the process: a cookie
    kept from one provider answer (a load balancer's stickiness, bot management) would go with
    every later call, whoever makes it, and pin them all to one backend."""

    def extract_cookies(self, response, request) -> None:
        pass

    def set_cookie(self, cookie) -> None:
        pass


def client_limits() -> httpx.Limits:
    return httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE,
                        keepalive_expiry=30)


def make_client(settings: ProviderSettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The process's client: ``POOL_SHARDS`` pools on the loop's sockets (or ``transport``)."""
    # No read timeout at the transport: first-token and between-token limits are enforced per
    # event (see ``Upstream.with_timeouts``), which a single read timeout cannot express.
    timeout = httpx.Timeout(connect=settings.provider_connect_timeout, read=None, write=30.0, pool=30.0)
    limits = client_limits()
    common: dict[str, Any] = {"timeout": timeout, "follow_redirects": False, "cookies": NoCookies()}
    if transport is not None:
        return httpx.AsyncClient(transport=transport, **common)
    if urllib.request.getproxies():
        # An egress proxy from the environment: httpx applies it only to its own transport.
        return httpx.AsyncClient(limits=limits, http2=False, **common)
    return httpx.AsyncClient(transport=ShardedTransport(POOL_SHARDS, limits), **common)
