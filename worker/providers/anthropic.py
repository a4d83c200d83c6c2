"""Anthropic Messages API (the claude-* models), streamed.

A retried call continues where the last one stopped: the delivered text goes back as a final
assistant message (a "prefill"), which the model continues rather than repeats
(``continuation.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from worker.providers.base import Completion, GenerationRequest, ProviderError, TextDelta
from worker.providers.bodies import given, merge_extra, merge_turns, split_system
from worker.providers.continuation import WhitespaceSkipper, one_call, split_prefill
from worker.providers.faults import mid_stream_error
from worker.providers.http import HTTPProvider, sse_json

ANTHROPIC_VERSION = "2023-06-01"

# Snapshots whose catalogued max_output needs a beta header: without it Anthropic refuses
# max_tokens above 4,096 for claude-3-5-sonnet-20240620.
BETA_HEADERS = {"claude-3-5-sonnet-20240620": "max-tokens-3-5-sonnet-2024-07-15"}

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "refusal": "content_filter"}

# In-band ``error`` events carry a type instead of a status; each is classified as the HTTP
# status Anthropic uses for it, so a mid-stream fault is treated like the same fault up front.
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


class AnthropicProvider(HTTPProvider):
    family = "anthropic"
    display = "Anthropic"

    def _url(self, request: GenerationRequest) -> str:
        return self.endpoint(request, self.settings.anthropic_base_url, "/v1/messages")

    def _headers(self, request: GenerationRequest | None = None) -> dict[str, str]:
        key = self.settings.anthropic_api_key
        assert key is not None  # check_configured: the stream needs its key before it calls
        headers = {"x-api-key": key.get_secret_value(),
                   "anthropic-version": ANTHROPIC_VERSION}
        beta = BETA_HEADERS.get(request.model.upstream) if request is not None else None
        if beta:
            headers["anthropic-beta"] = beta
        return headers

    def _conversation(self, request: GenerationRequest) -> tuple[str, list[dict[str, str]], str, bool]:
        """(system, messages, whitespace stripped off the prefill, whether a prefill was sent)."""
        system, rest = split_system(request.messages)
        messages = merge_turns((m.role, m.content) for m in rest)
        if not messages:
            raise ProviderError("Anthropic models need at least one user message; the conversation has none",
                                code="invalid_request")
        if messages[0]["role"] != "user":
            raise ProviderError("Anthropic models need the conversation to start with a user message; "
                                "this one starts with an assistant message", code="invalid_request")
        prefill = ""
        if request.continuation:
            if messages[-1]["role"] == "assistant":
                # The first call continued this assistant message, so the delivered text follows it directly.
                prefill = messages.pop()["content"] + request.continuation
            else:
                prefill = request.continuation
        elif messages[-1]["role"] == "assistant":
            # The client's own prefill: same rule, it must not end in whitespace.
            prefill = messages.pop()["content"]
        stripped, trailing = split_prefill(prefill)
        if stripped:
            messages.append({"role": "assistant", "content": stripped})
        return system, messages, trailing, bool(request.continuation) and bool(stripped)

    def _body(self, request: GenerationRequest, system: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": request.model.upstream,
            "max_tokens": request.tokens_left(),
            "messages": messages,
            "stream": True,
            "temperature": p.temperature,
            "metadata": {"user_id": request.upstream_user},
            **given(top_k=p.top_k, top_p=p.top_p),
        }
        if system:
            body["system"] = system
        # Whitespace-only stop sequences are refused upstream; the runner's stop filter still applies them.
        stops = [s for s in p.stop if s.strip()]
        if stops:
            body["stop_sequences"] = stops
        return merge_extra(body, request.model.extra)

    def _stream_error(self, event: dict[str, Any]) -> ProviderError:
        error = event.get("error")
        err = error if isinstance(error, dict) else {}
        etype = err.get("type") or "api_error"
        status = ERROR_STATUS.get(etype, 500)
        return mid_stream_error(status, event, self.display, etype, err.get("message") or etype)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        self.check_configured()
        system, messages, trailing, prefilled = self._conversation(request)
        body = self._body(request, system, messages)
        skip = WhitespaceSkipper(trailing)
        input_tokens = output_tokens = 0
        stop_reason = None
        async with self.upstream.stream(self._url(request), body, self._headers(request)) as response:
            async for sse in self.upstream.events(response):
                if not sse.data:
                    continue
                event = sse_json(sse, self.display)
                if not isinstance(event, dict):
                    continue
                kind = event.get("type") or sse.event
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        text = skip.feed(delta["text"])
                        if text:
                            yield TextDelta(text)
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    input_tokens = _input_tokens(usage)
                    output_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "message_delta":
                    usage = event.get("usage") or {}
                    if usage.get("output_tokens") is not None:
                        output_tokens = int(usage["output_tokens"])
                    if usage.get("input_tokens") is not None:
                        input_tokens = _input_tokens(usage)
                    reason = (event.get("delta") or {}).get("stop_reason")
                    if reason:
                        stop_reason = STOP_REASONS.get(reason, reason)
                elif kind == "message_stop":
                    break
                elif kind == "error":
                    raise self._stream_error(event)
                # ping, content_block_start/stop, and event types added later: nothing to do
        self.check_ended(stop_reason)
        assert stop_reason is not None  # check_ended raised otherwise
        yield one_call(request, stop_reason, input_tokens, output_tokens, prefilled)


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are reported apart from ``input_tokens``; the prompt is all of them.
    return sum(int(usage.get(k) or 0)
               for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
