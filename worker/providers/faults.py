"""Upstream faults, classified once for every HTTP family: what the retry policy
(``worker/retries.py``) and the client see.

429/408/409/425/5xx/529 and transport failures are retryable (honouring ``Retry-After``); other
4xx are the caller's problem and end the job. The client is shown the status and the upstream's
error names (type, code, param), never its text, which can quote the fleet's key or name
internal hosts: that goes to the worker's log, scrubbed of every configured secret
(``shared/logs.py``).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
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


def _upstream_error(body: bytes) -> tuple[str, dict[str, Any]]:
    """(the upstream's error text, its error object when it sent JSON)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode(errors="replace").strip(), {}
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return body[:300].decode(errors="replace").strip(), {}
    err = data.get("error", data)
    if isinstance(err, str):
        return err, data
    if not isinstance(err, dict):
        err = data
    for key in ("message", "Message", "detail"):
        if isinstance(err.get(key), str):
            return err[key], err
    for key in ("message", "Message", "detail"):
        if isinstance(data.get(key), str):
            return data[key], err
    return body[:300].decode(errors="replace").strip(), err


# What of an upstream's error the client is shown: its structured fields, when they are names.
# Its text is not: it can quote the fleet's key or name internal hosts; the worker's log has it.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
SHOWN_FIELDS = ("type", "code", "status", "param", "reason")


def upstream_names(fields: dict[str, Any], *extra: str) -> str:
    """``"; type invalid_request_error, param temperature"``: the names an upstream's error
    carries (and ``extra`` ones), safe to show; "" when there are none."""
    shown = [f"{key} {value}" for key in SHOWN_FIELDS
             if isinstance(value := fields.get(key), str) and NAME.fullmatch(value)]
    shown += [value for value in extra if isinstance(value, str) and NAME.fullmatch(value)]
    return "; " + ", ".join(shown) if shown else ""


def shown_kind(kind: Any) -> str:
    """``" (overloaded_error)"``: the kind of an upstream's error, to show when it is a name."""
    return f" ({kind})" if isinstance(kind, str) and NAME.fullmatch(kind) else ""


def classify(status: int, body: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    text, fields = _upstream_error(body)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is None and headers.get("retry-after-ms"):
        retry_after = parse_retry_after(headers["retry-after-ms"])
        retry_after = retry_after / 1000 if retry_after is not None else None
    names = upstream_names(fields)
    if status in (401, 403):
        log.error("%s refused the configured credentials (HTTP %d): %s", provider, status, text)
        return ProviderError(f"{provider} refused this fleet's credentials (HTTP {status}); "
                             "the operator must check the provider key", code="upstream_auth", status=status)
    retryable = status == 429 or status in RETRYABLE_STATUS
    (log.info if retryable else log.warning)("%s answered HTTP %d: %s", provider, status, text)
    if status == 429:
        return ProviderError(f"{provider} rate-limited the call (HTTP 429{names})", code="upstream_rate_limited",
                             status=status, retryable=True, retry_after=retry_after)
    if status in RETRYABLE_STATUS:
        return ProviderError(f"{provider} failed (HTTP {status}{names})", code="upstream_unavailable",
                             status=status, retryable=True, retry_after=retry_after)
    if status == 404:
        return ProviderError(f"{provider} does not know this model or route (HTTP 404{names})",
                             code="upstream_rejected", status=status)
    if status in (400, 413, 422) and any(h in text.lower() for h in CONTEXT_HINTS):
        return ProviderError(f"{provider}: the prompt and max_tokens do not fit the model's context "
                             f"(HTTP {status}{names})", code="context_length_exceeded", status=status)
    return ProviderError(f"{provider} rejected the request (HTTP {status}{names})", code="upstream_rejected",
                         status=status)


def mid_stream_error(status: int, event: Any, provider: str, kind: str | int, detail: str | int) -> ProviderError:
    """An error a provider reported inside an answer already streaming (``event``), classified as
    its HTTP ``status`` would be; the message names its kind (the upstream's text, ``detail``,
    goes to the log with the rest of the event)."""
    exc = classify(status, orjson.dumps(event), httpx.Headers(), provider)
    if exc.code != "upstream_auth":
        exc.message = f"{provider} reported an error mid-stream{shown_kind(str(kind))}"
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
    # The exception's text names the host and port: the log has it, the client the kind of fault.
    log.warning("the connection to %s failed: %s: %s", provider, type(exc).__name__, exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return ProviderError(f"cannot connect to {provider} (timed out)", code="upstream_unreachable",
                             retryable=True)
    if isinstance(exc, httpx.ConnectError):
        reason = "refused" if "refused" in str(exc).lower() else "failed"
        return ProviderError(f"cannot connect to {provider} (connection {reason})", code="upstream_unreachable",
                             retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"{provider} timed out ({type(exc).__name__})", code="upstream_timeout", retryable=True)
    return ProviderError(f"the connection to {provider} broke ({type(exc).__name__})", code="stream_cut",
                         retryable=True)
