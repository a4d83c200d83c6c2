"""Upstream faults, classified once for every HTTP family: what the retry policy
(``worker/retries.py``) and the client see.

429/408/409/425/5xx/529 and transport failures are retryable (honouring ``Retry-After``); other
4xx are the caller's problem and end the job. The client is shown the status and the upstream's
error names (type, code, param) where they are in the family's documented vocabulary, never its
text, which can quote the fleet's key or name internal hosts: that goes to the worker's log,
scrubbed of every configured secret (``shared/logs.py``).
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


# What of an upstream's error the client is shown: the names its error carries, only those in the
# family's documented vocabulary (a closed list: an upstream, or anything posing as one, can put a
# key or an internal host name in any field); any other value is shown as ``upstream_error``.
# Its text is never shown: it can quote the fleet's key or name internal hosts; the worker's log has it.
SHOWN_FIELDS = ("type", "code", "status", "reason")
UNKNOWN_NAME = "upstream_error"
_OPENAI_STYLE = frozenset({
    # types
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "insufficient_quota", "server_error", "api_error", "requests", "tokens",
    "conflict_error", "unprocessable_entity_error", "internal_server_error", "timeout_error",
    # codes
    "context_length_exceeded", "rate_limit_exceeded", "invalid_api_key", "model_not_found",
    "invalid_value", "invalid_type", "unsupported_value", "unsupported_parameter",
    "unknown_parameter", "missing_required_parameter", "string_above_max_length",
    "integer_above_max_value", "integer_below_min_value", "decimal_above_max_value",
    "decimal_below_min_value", "array_above_max_length", "empty_array", "invalid_prompt",
    "content_policy_violation", "content_filter", "unknown_url", "engine_overloaded",
})
ERROR_NAMES: dict[str, frozenset[str]] = {
    "OpenAI": _OPENAI_STYLE,
    "LLM-Engine": _OPENAI_STYLE | {"BadRequestError", "NotFoundError", "InternalServerError",
                                   "ServiceUnavailableError", "TooManyRequestsError"},
    "Mistral": _OPENAI_STYLE | {"invalid_request_message_order", "invalid_model", "rate_limited",
                                "unauthorized", "internal_server_error", "service_tier_capacity_exceeded"},
    "Anthropic": frozenset({
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "billing_error",
        "timeout_error"}),
    "Gemini": frozenset({  # google.rpc.Code names, and the ErrorInfo reasons of the Gemini API
        "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED",
        "PERMISSION_DENIED", "NOT_FOUND", "ABORTED", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED",
        "CANCELLED", "DATA_LOSS", "UNKNOWN", "INTERNAL", "UNAVAILABLE", "UNIMPLEMENTED",
        "DEADLINE_EXCEEDED", "API_KEY_INVALID", "RATE_LIMIT_EXCEEDED", "SERVICE_DISABLED"}),
    "Bedrock": frozenset({
        "ValidationException", "ThrottlingException", "AccessDeniedException",
        "ResourceNotFoundException", "ServiceQuotaExceededException", "ServiceUnavailableException",
        "InternalServerException", "ModelTimeoutException", "ModelErrorException",
        "ModelNotReadyException", "ModelStreamErrorException", "UnrecognizedClientException",
        "ExpiredTokenException", "internalServerException", "modelStreamErrorException",
        "throttlingException", "validationException", "serviceUnavailableException"}),
}
# The request fields an upstream may name as the one at fault (``param``), ``messages.0.content``
# shown as ``messages``: those this fleet sends, nothing else.
SHOWN_PARAMS = frozenset({
    "model", "messages", "prompt", "contents", "system", "systemInstruction", "generationConfig",
    "inferenceConfig", "max_tokens", "max_completion_tokens", "maxOutputTokens", "maxTokens",
    "temperature", "top_p", "topP", "top_k", "topK", "stop", "stop_sequences", "stopSequences",
    "seed", "random_seed", "stream", "stream_options", "n", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "metadata", "safe_prompt", "tools", "tool_choice",
})
_PARAM_ROOT = re.compile(r"[A-Za-z_]+")
_NUMERIC_CODE = re.compile(r"\d{1,6}")  # Mistral's and vLLM's codes: numbers


def shown_name(value: Any, provider: str) -> str | None:
    """The name to show for one of an upstream's error fields: the value itself when it is in the
    family's vocabulary (or a plain number), ``upstream_error`` otherwise, None when absent."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None
    known = ERROR_NAMES.get(provider) or frozenset().union(*ERROR_NAMES.values())
    return value if value in known or _NUMERIC_CODE.fullmatch(value) else UNKNOWN_NAME


def shown_param(value: Any) -> str | None:
    root = _PARAM_ROOT.match(value) if isinstance(value, str) else None
    return root.group() if root and root.group() in SHOWN_PARAMS else None


def upstream_names(fields: dict[str, Any], provider: str) -> str:
    """``"; type invalid_request_error, param temperature"``: the names an upstream's error
    carries, as ``shown_name`` shows them; "" when there are none."""
    shown: list[str] = []
    for key in SHOWN_FIELDS:
        name = shown_name(fields.get(key), provider)
        if name is not None and f"{key} {name}" not in shown:
            shown.append(f"{key} {name}")
    if (param := shown_param(fields.get("param"))) is not None:
        shown.append(f"param {param}")
    return "; " + ", ".join(shown) if shown else ""


def shown_kind(kind: Any, provider: str) -> str:
    """``" (overloaded_error)"``: the kind of an upstream's error, as ``shown_name`` shows it."""
    name = shown_name(kind, provider)
    return f" ({name})" if name is not None else ""


def classify(status: int, body: bytes, headers: httpx.Headers, provider: str) -> ProviderError:
    text, fields = _upstream_error(body)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is None and headers.get("retry-after-ms"):
        retry_after = parse_retry_after(headers["retry-after-ms"])
        retry_after = retry_after / 1000 if retry_after is not None else None
    names = upstream_names(fields, provider)
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
        exc.message = f"{provider} reported an error mid-stream{shown_kind(kind, provider)}"
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
