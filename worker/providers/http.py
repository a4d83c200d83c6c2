"""What every HTTP adapter shares: the client, upstream error classification, timeouts.

Upstream faults are classified here, once: 429/408/409/5xx/529 and transport failures are
retryable (the runner retries them with backoff, honouring ``Retry-After``); other 4xx are
the caller's problem and end the job with the upstream's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.cookiejar
import logging
import ssl
import time
import urllib.request
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import orjson
from httpx_sse import ServerSentEvent

from shared.provider_config import ProviderSettings
from worker.providers.base import Provider, ProviderError
from worker.providers.netio import AsyncioBackend
from worker.providers.sse import EventTooLarge, event_stream

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                 "prompt is too long", "input is too long", "exceeds the context", "too long",
                 "context window", "max_tokens")
MAX_ERROR_BODY = 4096


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
        response.stream = _Released(response.stream, self.busy, index)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when it is closed."""

    def __init__(self, stream, busy: list[int], index: int):
        self._stream = stream
        self._busy = busy
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


def make_client(settings: ProviderSettings) -> httpx.AsyncClient:
    # No read timeout at the transport: first-token and between-token limits are enforced per
    # event (see ``Upstream.with_timeouts``), which a single read timeout cannot express.
    timeout = httpx.Timeout(connect=settings.provider_connect_timeout, read=None, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE,
                          keepalive_expiry=30)
    common = {"timeout": timeout, "follow_redirects": False, "cookies": NoCookies()}
    if urllib.request.getproxies():
        # An egress proxy from the environment: httpx applies it only to its own transport.
        return httpx.AsyncClient(limits=limits, http2=False, **common)
    return httpx.AsyncClient(transport=ShardedTransport(POOL_SHARDS, limits), **common)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _upstream_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode(errors="replace").strip()
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "Message", "detail"):
                if isinstance(err.get(key), str):
                    return err[key]
        elif isinstance(err, str):
            return err
        for key in ("message", "Message", "detail"):
            if isinstance(data.get(key), str):
                return data[key]
    return body[:300].decode(errors="replace").strip()


def classify(status: int, body: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    message = _upstream_message(body) or f"HTTP {status}"
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is None and headers.get("retry-after-ms"):
        retry_after = parse_retry_after(headers["retry-after-ms"])
        retry_after = retry_after / 1000 if retry_after is not None else None
    if status == 429:
        return ProviderError(f"{provider} rate-limited the call: {message}", code="upstream_rate_limited",
                             status=status, retryable=True, retry_after=retry_after)
    if status in RETRYABLE_STATUS:
        return ProviderError(f"{provider} failed (HTTP {status}): {message}", code="upstream_unavailable",
                             status=status, retryable=True, retry_after=retry_after)
    if status in (401, 403):
        # The upstream's own text can quote part of the operator's key: keep it in the worker's
        # log, tell the client only what happened.
        log.error("%s refused the configured credentials (HTTP %d): %s", provider, status, message)
        return ProviderError(f"{provider} refused this fleet's credentials (HTTP {status}); "
                             "the operator must check the provider key", code="upstream_auth", status=status)
    if status == 404:
        return ProviderError(f"{provider} does not know this model or route (HTTP 404): {message}",
                             code="upstream_rejected", status=status)
    lowered = message.lower()
    if status in (400, 413, 422) and any(h in lowered for h in CONTEXT_HINTS):
        return ProviderError(f"{provider}: the prompt and max_tokens do not fit the model's context: {message}",
                             code="context_length_exceeded", status=status)
    return ProviderError(f"{provider} rejected the request (HTTP {status}): {message}",
                         code="upstream_rejected", status=status)


def mid_stream_error(status: int, event: Any, provider: str, kind: str, detail: str) -> ProviderError:
    """An error a provider reported inside an answer already streaming (``event``), classified as
    its HTTP ``status`` would be. The message names it, but for a refused key: the upstream's
    text may quote the key, and ``classify``'s own message stays."""
    exc = classify(status, orjson.dumps(event), httpx.Headers(), provider)
    if exc.code != "upstream_auth":
        exc.message = f"{provider} reported an error mid-stream ({kind}): {detail}"
    return exc


async def read_error_body(response: httpx.Response, timeout: float = 5.0) -> bytes:
    """At most MAX_ERROR_BODY bytes of an error answer, within ``timeout``: an upstream that
    sends an error status and then stalls must not hold the job."""
    body = b""
    try:
        async with asyncio.timeout(timeout):
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_ERROR_BODY:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass
    return body[:MAX_ERROR_BODY]


def transport_error(exc: Exception, provider: str) -> ProviderError:
    if isinstance(exc, httpx.LocalProtocolError):
        # The request could not even be written: a header that is not valid HTTP. Its text
        # quotes the header's value, which may be a credential: neither the client nor the log
        # gets it. Sending it again would fail the same way.
        log.error("could not send a request to %s: a header is not valid HTTP (%s); check the "
                  "configured credentials and extra headers", provider, type(exc).__name__)
        return ProviderError(f"could not send the request to {provider}: a header this fleet sends is "
                             "not valid HTTP; the operator must check the provider's configuration",
                             code="upstream_auth")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ProviderError(f"cannot connect to {provider}: {exc}", code="upstream_unreachable", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"{provider} timed out: {exc}", code="upstream_timeout", retryable=True)
    return ProviderError(f"the connection to {provider} broke: {type(exc).__name__}: {exc}",
                         code="stream_cut", retryable=True)


# How long a finished answer's stream is given to end its body (so that its connection can
# be kept for the next call) before the connection is closed instead.
END_OF_BODY_SECONDS = 1.0


class Upstream:
    """One family's HTTP access: builds requests, checks statuses, streams with timeouts."""

    def __init__(self, client: httpx.AsyncClient, settings: ProviderSettings, provider: str):
        self.client = client
        self.settings = settings
        self.provider = provider
        # The event iterator of each open response (``events``), to read its body's end.
        self._sources: weakref.WeakKeyDictionary[httpx.Response, AsyncIterator[Any]] = weakref.WeakKeyDictionary()

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: Any, headers: dict[str, str], params=None) -> AsyncIterator[httpx.Response]:
        """Open a streaming POST; yields the response once its status is known to be good."""
        request = self.client.build_request(
            "POST", url, content=orjson.dumps(body), params=params,
            # identity: a compressed stream could inflate far beyond what was received
            headers={"content-type": "application/json", "accept-encoding": "identity", **headers},
        )
        try:
            async with asyncio.timeout(self.settings.provider_first_token_timeout):
                response = await self.client.send(request, stream=True)
        except TimeoutError:
            raise ProviderError(f"{self.provider} sent no answer within "
                                f"{self.settings.provider_first_token_timeout:g} s",
                                code="upstream_timeout", retryable=True) from None
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.provider) from exc
        try:
            if response.status_code >= 400:
                raise classify(response.status_code, await read_error_body(response), response.headers,
                               self.provider)
            yield response
            await self._read_to_end(response)
        finally:
            self._sources.pop(response, None)
            await response.aclose()

    async def _read_to_end(self, response: httpx.Response) -> None:
        """An adapter stops reading at the answer's last event (``[DONE]``, ``message_stop``);
        the body's end follows at once. Closing a response before it is read closes its
        connection, and every call would open a new one (a TCP and TLS handshake, tens of
        milliseconds to a real provider): read that end first, briefly."""
        source = self._sources.pop(response, None)
        if source is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(END_OF_BODY_SECONDS):
                async for _ in source:
                    return  # more after the answer's end: not worth waiting for, close it

    def events(self, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if "text/event-stream" not in content_type:
            raise ProviderError(f"{self.provider} answered with {content_type or 'no content type'!r}, "
                                "not an event stream", code="upstream_invalid", retryable=True)
        source = self.with_timeouts(event_stream(response))
        self._sources[response] = source
        return source

    async def with_timeouts(self, iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Items of ``iterator``, the first within the first-token timeout and each next one
        within the idle timeout; transport failures become retryable ProviderErrors.

        One timer per stream, not one per item: each item only moves the deadline, and the
        timer, when it fires early, sets itself again for the deadline then current. The wait
        counts only while this generator waits for ``iterator``, not while its consumer holds
        an item; a generator left suspended holds no timer. The timer cancels the task that
        first iterates: iterate it from one task (every adapter does)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        cancelling = task.cancelling()
        idle_limit = self.settings.provider_idle_timeout
        limit = self.settings.provider_first_token_timeout
        first = True
        deadline = loop.time() + limit
        waiting = True
        expired = False
        timer: asyncio.TimerHandle | None = None
        armed_for = 0.0  # when the timer fires

        def check() -> None:
            nonlocal timer, expired, armed_for
            timer = None
            if not waiting:
                return  # the consumer holds an item: set again when the wait resumes
            if loop.time() < deadline:
                timer, armed_for = loop.call_at(deadline, check), deadline
                return
            expired = True
            task.cancel()

        it = aiter(iterator)
        try:
            while True:
                if timer is None or armed_for > deadline:  # unset, or set for a longer limit
                    if timer is not None:
                        timer.cancel()
                    timer, armed_for = loop.call_at(deadline, check), deadline
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if expired and task.uncancel() <= cancelling:
                        which = "first token" if first else "next token"
                        raise ProviderError(f"{self.provider} sent no {which} within {limit:g} s",
                                            code="upstream_timeout", retryable=True) from None
                    raise
                except httpx.HTTPError as exc:
                    raise transport_error(exc, self.provider) from exc
                except EventTooLarge as exc:
                    raise ProviderError(f"{self.provider} sent an unusable stream: {exc}",
                                        code="upstream_invalid", retryable=True) from None
                waiting = False
                yield item
                waiting = True
                first = False
                limit = idle_limit
                deadline = loop.time() + limit
        finally:
            if timer is not None:
                timer.cancel()


def sse_json(sse: ServerSentEvent, provider: str) -> Any:
    try:
        return orjson.loads(sse.data)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"{provider} sent an unreadable stream event", code="upstream_invalid",
                            retryable=True) from exc


class HTTPProvider(Provider):
    """An adapter that reaches its provider over HTTP, through the process's shared client and
    this module's fault handling. Subclasses say how to build the URL, headers and body, and
    how to read the stream."""

    display: str

    def __init__(self, client: httpx.AsyncClient, settings: ProviderSettings):
        self.settings = settings
        self.upstream = Upstream(client, settings, self.display)

    def missing_configuration(self) -> str | None:
        return self.settings.missing_setting(self.family)

    def check_configured(self) -> None:
        """Raise ``model_unavailable``, naming what to set, when the family is not configured."""
        missing = self.missing_configuration()
        if missing:
            raise ProviderError(f"{self.display} is not configured: set {missing}", code="model_unavailable")

    @staticmethod
    def endpoint(request, configured: str | None, path: str) -> str:
        """``path`` under the model's own ``base_url`` (a catalog override) or the family's."""
        return (request.spec.base_url or configured or "").rstrip("/") + path

    def check_ended(self, finish_reason: str | None, usage: object = True) -> None:
        """A stream is complete only with a finish reason and (pass None if absent) usage."""
        if finish_reason is None:
            raise ProviderError(f"{self.display}'s stream ended before the answer did", code="stream_cut",
                                retryable=True)
        if usage is None:
            raise ProviderError(f"{self.display} sent no token usage", code="upstream_invalid", retryable=True)
