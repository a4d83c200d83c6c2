"""OpenAI Chat Completions (the gpt-* models)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from shared.jobspec import Sampling
from worker.providers.base import (
    Completion,
    Embeddings,
    GenerationRequest,
    ProviderError,
    TextDelta,
    ToolCallDelta,
)
from worker.providers.bodies import (
    chat_messages,
    given,
    job_seed,
    openai_response_format,
    openai_tools,
    tool_call_pieces,
)
from worker.providers.continuation import PrefixSkipper
from worker.providers.faults import shown_kind
from worker.providers.http import HTTPProvider, sse_json

log = logging.getLogger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                  "tool_calls": "tool_calls", "function_call": "tool_calls"}


def openai_sampling(params: Sampling, max_tokens: int) -> dict[str, Any]:
    """The sampling fields every OpenAI-style body takes: temperature, ``max_tokens``, stop."""
    body: dict[str, Any] = {"temperature": params.temperature, "max_tokens": max_tokens}
    if params.stop:
        body["stop"] = list(params.stop)
    return body


class Choices:
    """The text of the first choice of each chunk (and its tool calls' pieces, for chat), with
    the finish reason and usage the stream reported (read once it is over)."""

    def __init__(self, text_of: Callable[[dict[str, Any]], str | None], tool_calls: bool = False):
        self.text_of = text_of
        self.tool_calls = tool_calls
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    async def texts(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str | ToolCallDelta]:
        async for chunk in chunks:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = self.text_of(choice)
                if text:
                    yield text
                if self.tool_calls:
                    for piece in tool_call_pieces(choice.get("delta") or {}):
                        yield piece
                if choice.get("finish_reason"):
                    self.finish_reason = FINISH_REASONS.get(choice["finish_reason"], choice["finish_reason"])


def openai_embeddings(answer: Any, provider: str) -> Embeddings:
    """OpenAI's (and Mistral's) embeddings answer: ``data[].embedding`` by ``index``, ``usage``."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise ProviderError(f"{provider} answered embeddings without data", code="upstream_invalid", retryable=True)
    rows = sorted(data, key=lambda row: row.get("index", 0))
    usage = answer.get("usage") or {}
    return Embeddings([list(row["embedding"]) for row in rows], int(usage.get("prompt_tokens") or 0))


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
                log.warning("%s failed mid-stream: %s", provider.display, message)
                kind = err.get("type") or err.get("code") if isinstance(err, dict) else None
                raise ProviderError(f"{provider.display} failed mid-stream{shown_kind(kind, provider.display)}",
                                    code="upstream_unavailable", retryable=True)
            yield chunk


class OpenAIProvider(HTTPProvider):
    family = "openai"
    display = "OpenAI"

    def _url(self, request: GenerationRequest) -> str:
        return self.endpoint(request, self.settings.openai_base_url, "/chat/completions")

    def _headers(self) -> dict[str, str]:
        key = self.settings.openai_api_key
        assert key is not None  # check_configured: the stream needs its key before it calls
        return {"authorization": f"Bearer {key.get_secret_value()}"}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        return {
            "model": request.model.upstream,
            "messages": chat_messages(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": p.seed if p.seed is not None else job_seed(request.job_id),
            "user": request.upstream_user,
            # Regenerated whole after a fault (see ``stream``): the job's whole bound.
            **openai_sampling(p, request.max_tokens),
            **given(top_p=p.top_p, frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty,
                    reasoning_effort=p.reasoning_effort),
            **openai_tools(request.tools),
            **openai_response_format(request.output),
            **request.model.extra,
        }

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        self.check_configured()
        skip = PrefixSkipper(request.continuation, self.display)
        choices = Choices(lambda choice: (choice.get("delta") or {}).get("content"), tool_calls=True)
        async for item in choices.texts(openai_chunks(self, self._url(request), self._body(request), self._headers())):
            if isinstance(item, ToolCallDelta):
                yield item
                continue
            text = skip.feed(item)
            if text:
                yield TextDelta(text)
        self.check_ended(choices.finish_reason, choices.usage)
        usage = choices.usage
        assert choices.finish_reason is not None and usage is not None  # check_ended raised otherwise
        yield Completion(choices.finish_reason, int(usage.get("prompt_tokens", 0)),
                         int(usage.get("completion_tokens", 0)))

    async def embed(self, request: GenerationRequest) -> Embeddings:
        self.check_configured()
        embed = request.job.embed
        assert embed is not None  # an embedding job
        body: dict[str, Any] = {"model": request.model.upstream, "encoding_format": "float",
                                "input": [list(i) if isinstance(i, tuple) else i for i in embed.inputs],
                                "user": request.upstream_user, **given(dimensions=embed.dimensions)}
        url = self.endpoint(request, self.settings.openai_base_url, "/embeddings")
        return openai_embeddings(await self.upstream.post_json(url, body, self._headers()), self.display)
