"""OpenAI Chat Completions (the gpt-* models)."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

from worker.providers.base import (
    Completion, GenerationRequest, PrefixSkipper, ProviderError, TextDelta,
)
from worker.providers.http import HTTPProvider, sse_json

FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                  "tool_calls": "tool_calls", "function_call": "tool_calls"}


def openai_sampling(params: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"temperature": params.get("temperature", 0.2)}
    if params.get("max_tokens") is not None:
        body["max_tokens"] = params["max_tokens"]
    if params.get("stop"):
        body["stop"] = params["stop"]
    for name in ("top_p", "frequency_penalty", "presence_penalty", "reasoning_effort"):
        if name in params:
            body[name] = params[name]
    return body


async def openai_chunks(provider: HTTPProvider, url: str, body: dict[str, Any],
                        headers: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI-style SSE stream, up to ``[DONE]``; an in-band error raises
    (retryable: the provider failed mid-answer)."""
    async with provider.upstream.stream(url, body, headers) as response:
        async for sse in provider.upstream.events(response):
            if sse.data.strip() == "[DONE]":
                return
            chunk = sse_json(sse, provider.display)
            if "error" in chunk:
                err = chunk["error"] or {}
                message = err.get("message", err) if isinstance(err, dict) else err
                raise ProviderError(f"{provider.display} failed mid-stream: {message}",
                                    code="upstream_unavailable", retryable=True)
            yield chunk


def job_seed(job_id: str) -> int:
    """A seed fixed per job, so that a retried call is as close to the first as the provider allows."""
    return zlib.crc32(job_id.encode()) & 0x7FFFFFFF


class OpenAIProvider(HTTPProvider):
    family = "openai"
    display = "OpenAI"

    def _url(self, request: GenerationRequest) -> str:
        base = request.spec.base_url or self.settings.openai_base_url
        return base.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.settings.openai_api_key.get_secret_value()}"}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        return {
            "model": request.spec.upstream,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": job_seed(request.job_id),
            **openai_sampling(request.params),
            **request.spec.extra,
        }

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        if self.missing_configuration():
            raise ProviderError(f"{self.display} is not configured: set {self.missing_configuration()}",
                                code="model_unavailable")
        skip = PrefixSkipper(request.continuation, self.display)
        finish_reason = None
        usage = None
        async for chunk in openai_chunks(self, self._url(request), self._body(request), self._headers()):
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    text = skip.feed(text)
                    if text:
                        yield TextDelta(text)
                if choice.get("finish_reason"):
                    finish_reason = FINISH_REASONS.get(choice["finish_reason"], choice["finish_reason"])
        self.check_ended(finish_reason, usage)
        yield Completion(finish_reason, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
