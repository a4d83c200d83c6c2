"""Upstream faults, classified once for every HTTP family: what the retry policy
(``worker/retries.py``) and the client see.

429/408/409/425/5xx/529 and transport failures are retryable (honouring ``Retry-After``); other
4xx are the caller's problem and end the job with the upstream's own message, except a refused
key, whose upstream text (it may quote the key) stays in the worker's log.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

import httpx
import orjson

from worker.providers.base import ProviderError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too many tokens",
                 "prompt is too long", "input is too long", "exceeds the context", "too long",
                 "context window", "max_tokens")
MAX_ERROR_BODY = 4096


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
