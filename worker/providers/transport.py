"""The HTTP client every adapter of a worker process shares: its pool, its sockets, no cookies.

Calls go through ``h1.H1Transport`` (HTTP/1.1 on the loop's own transports, parsed by
httptools) rather than httpx's own transport (httpcore and h11, through anyio): per relayed
token and per call, that is what most of a provider call's CPU was (bench/README.md, "Where a
provider worker's time goes"). A streamed call skips httpx's client layers too (``ProviderClient``):
no auth flow, no redirects, no cookies, none of which a provider call uses.
"""

from __future__ import annotations

import functools
import http.cookiejar
import logging
import urllib.request
from typing import Any

import httpx

from shared.provider_config import ProviderSettings
from worker.providers.h1 import H1Transport

log = logging.getLogger(__name__)


MAX_CONNECTIONS = 2000
MAX_KEEPALIVE = 512


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> httpx.URL:
    return httpx.URL(url)


class ProviderClient(httpx.AsyncClient):
    """httpx's client; a streamed send on the worker's own transport goes straight to it.

    httpx's ``send`` runs an auth flow, a redirect loop and the cookie jar's extraction around
    every call, and wraps the body in one more stream: none of it does anything for a provider
    call (no auth object, redirects never followed, cookies never kept), and it cost about a
    tenth of a call's CPU. Every other use (a non-streamed send, an auth or redirect asked for,
    another transport) is httpx's own ``send``."""

    def __init__(self, *, direct: H1Transport | None = None, **kwargs: Any):
        if direct is not None:
            kwargs["transport"] = direct
        super().__init__(**kwargs)
        self.direct = direct
        self._defaults = list(self.headers.multi_items())
        self._timeouts = self.timeout.as_dict()

    def streamed_post(self, url: str, content: bytes, headers: dict[str, str]) -> httpx.Request:
        """The request ``build_request("POST", url, content=..., headers=...)`` builds, without its
        URL and header merging (no base URL, params or cookies here): the URL parsed once per
        endpoint, the client's default headers first, the call's own over them."""
        merged = dict(self._defaults)  # httpx names them in lower case
        merged.update((name.lower(), value) for name, value in headers.items())
        return httpx.Request("POST", _url(url), headers=merged, content=content,
                             extensions={"timeout": self._timeouts})

    async def send(self, request: httpx.Request, *, stream: bool = False, auth: Any = httpx.USE_CLIENT_DEFAULT,
                   follow_redirects: Any = httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
        direct = self.direct
        if (direct is None or not stream or auth is not httpx.USE_CLIENT_DEFAULT
                or follow_redirects is not httpx.USE_CLIENT_DEFAULT or self.is_closed
                or self.event_hooks["request"] or self.event_hooks["response"]):
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        response = await direct.handle_async_request(request)
        response.request = request
        return response


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
    """The process's client: ``H1Transport`` on the loop's sockets (or ``transport``)."""
    # No read timeout at the transport: first-token and between-token limits are enforced per
    # event (see ``Upstream.with_timeouts``), which a single read timeout cannot express.
    timeout = httpx.Timeout(connect=settings.provider_connect_timeout, read=None, write=30.0, pool=30.0)
    limits = client_limits()
    common: dict[str, Any] = {"timeout": timeout, "follow_redirects": False, "cookies": NoCookies()}
    if isinstance(transport, H1Transport):
        return ProviderClient(direct=transport, **common)
    if transport is not None:
        return ProviderClient(transport=transport, **common)
    if urllib.request.getproxies():
        # An egress proxy from the environment: httpx applies it only to its own transport.
        return ProviderClient(limits=limits, http2=False, **common)
    return ProviderClient(direct=H1Transport(limits), **common)
