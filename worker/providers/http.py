"""What every HTTP adapter shares: the streamed request with its timeouts (``Upstream``), and the
adapters' base class (``HTTPProvider``). The client is in ``transport.py``, the classification of
upstream faults in ``faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from shared.logs import register_secrets
from shared.provider_config import ProviderSettings, key_hosts_variable
from worker.providers.base import Provider, ProviderError
from worker.providers.faults import classify, read_error_body, transport_error
from worker.providers.sse import EventTooLarge, ServerSentEvent, event_stream

log = logging.getLogger(__name__)

# How long a finished answer's stream is given to end its body (so that its connection can
# be kept for the next call) before the connection is closed instead.
END_OF_BODY_SECONDS = 1.0


#: The largest JSON answer read (2,048 vectors of 3,072 floats as JSON text, with room).
MAX_JSON_BODY = 256 * 1024 * 1024


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
        # identity: a compressed stream could inflate far beyond what was received
        headers = {"content-type": "application/json", "accept-encoding": "identity", **headers}
        streamed_post = getattr(self.client, "streamed_post", None)  # transport.ProviderClient's
        if params is None and streamed_post is not None:
            request = streamed_post(url, orjson.dumps(body), headers)
        else:
            request = self.client.build_request("POST", url, content=orjson.dumps(body), params=params,
                                                headers=headers)
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

    async def post_json(self, url: str, body: Any, headers: dict[str, str], params=None) -> Any:
        """A POST answered with one JSON body (embeddings), read within the idle timeout and at
        most ``MAX_JSON_BODY`` bytes."""
        async with self.stream(url, body, headers, params) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.with_timeouts(response.aiter_bytes()):
                size += len(chunk)
                if size > MAX_JSON_BODY:
                    raise ProviderError(f"{self.provider} answered with more than {MAX_JSON_BODY} bytes",
                                        code="upstream_invalid")
                chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise ProviderError(f"{self.provider} answered with a body that is not JSON", code="upstream_invalid",
                                retryable=True) from None

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
        assert task is not None  # iterated from a task, as every adapter does
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
        register_secrets(settings.secret_values())
        self.settings = settings
        self.upstream = Upstream(client, settings, self.display)

    def missing_configuration(self) -> str | None:
        return self.settings.missing_setting(self.family)

    def check_configured(self) -> None:
        """Raise ``model_unavailable``, naming what to set, when the family is not configured."""
        missing = self.missing_configuration()
        if missing:
            raise ProviderError(f"{self.display} is not configured: set {missing}", code="model_unavailable")

    #: A family whose calls may go without its key (a self-hosted vLLM): a model routed to a host the
    #: key is not for is called without it, where another family's call is refused.
    key_optional = False

    def endpoint(self, request, configured: str | None, path: str) -> str:
        """``path`` under the model's own ``base_url`` (a catalog override) or the family's
        (``configured``). The family's key goes only to its own hosts (``key_allowed``)."""
        if not self.key_allowed(request, configured) and not self.key_optional:
            # Which setting to change, not where the model points: the host is the operator's to read.
            variable = key_hosts_variable(self.family)
            log.warning("model %r is routed to %s, a host this fleet's %s key is not for (%s)",
                        request.model.id, urlsplit(request.model.base_url).hostname, self.display, variable)
            raise ProviderError(f"model {request.model.id!r} is routed to a host of its own (its catalog "
                                f"base_url), which this fleet's {self.display} key is not for: the operator "
                                f"must name that host in {variable}", code="model_unavailable")
        return (request.model.base_url or configured or "").rstrip("/") + path

    def key_allowed(self, request, configured: str | None) -> bool:
        """Whether the family's key may go where the model is routed."""
        if not request.model.base_url:
            return True
        host = (urlsplit(request.model.base_url).hostname or "").lower()
        return host in self.settings.key_hosts(self.family, configured)

    def check_ended(self, finish_reason: str | None, usage: object = True) -> None:
        """A stream is complete only with a finish reason and (pass None if absent) usage."""
        if finish_reason is None:
            raise ProviderError(f"{self.display}'s stream ended before the answer did", code="stream_cut",
                                retryable=True)
        if usage is None:
            raise ProviderError(f"{self.display} sent no token usage", code="upstream_invalid", retryable=True)
