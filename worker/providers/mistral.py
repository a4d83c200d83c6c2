"""Mistral chat completions (La Plateforme): OpenAI-like streaming, with Mistral's differences.

* ``usage`` rides on the finishing chunk (there is no ``stream_options``), ``random_seed``
  instead of ``seed``, and ``finish_reason`` may be ``model_length`` or ``error``.
* A retried call continues the delivered text with a prefix message
  (``{"role": "assistant", "content": <delivered>, "prefix": true}``). Mistral's answer then
  *starts with the prefix* (its prefix guide slices it off with ``content[len(prefix):]``), so
  an echoed prefix is dropped (``continuation.EchoStripper``); should the model continue
  without echoing it, the text is passed through as it comes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from worker.providers.base import Completion, Embeddings, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.providers.bodies import (
    chat_messages,
    given,
    job_seed,
    openai_response_format,
    openai_tools,
    tool_call_pieces,
)
from worker.providers.continuation import EchoStripper, one_call
from worker.providers.faults import classify
from worker.providers.http import HTTPProvider, sse_json
from worker.providers.openai import openai_embeddings, openai_sampling

FINISH_REASONS = {"stop": "stop", "length": "length", "model_length": "length",
                  "tool_calls": "tool_calls", "content_filter": "content_filter"}
# In-band error chunks carry a status in ``code`` (a string) or only a ``type``.
ERROR_TYPE_STATUS = {"rate_limited": 429, "requests": 429, "rate_limit_error": 429,
                     "invalid_request_error": 400, "invalid_request": 400,
                     "authentication_error": 401, "permission_error": 403}


_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def mistral_call_id(call_id: str) -> str:
    """A tool call id as Mistral takes one (9 letters or digits): its own ids as they are, any
    other (another family's, a client's) made one, the same each time."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _error_status(err: dict[str, Any]) -> int:
    code = err.get("code")
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    if isinstance(code, str) and code.isdigit() and 400 <= int(code) <= 599:
        return int(code)
    etype = err.get("type")
    if isinstance(etype, str) and etype in ERROR_TYPE_STATUS:
        return ERROR_TYPE_STATUS[etype]
    # An unqualified failure after the stream started is the server's: retry it.
    return 503


class MistralProvider(HTTPProvider):
    family = "mistral"
    display = "Mistral"

    def _url(self, request: GenerationRequest) -> str:
        return self.endpoint(request, self.settings.mistral_base_url, "/chat/completions")

    def _headers(self) -> dict[str, str]:
        key = self.settings.mistral_api_key
        assert key is not None  # check_configured: the stream needs its key before it calls
        return {"authorization": f"Bearer {key.get_secret_value()}",
                "accept": "text/event-stream"}

    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        messages = chat_messages(request.messages)
        for message in messages:  # Mistral takes only its own shape of tool call id
            for call in message.get("tool_calls") or ():
                call["id"] = mistral_call_id(call["id"])
            if message.get("tool_call_id"):
                message["tool_call_id"] = mistral_call_id(message["tool_call_id"])
        if request.continuation:
            messages.append({"role": "assistant", "content": request.continuation, "prefix": True})
        return messages

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        return {
            "model": request.model.upstream,
            "messages": self._messages(request),
            "stream": True,
            **openai_sampling(p, request.tokens_left()),
            **given(top_p=p.top_p, frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty),
            "random_seed": p.seed if p.seed is not None else job_seed(request.job_id),
            **openai_tools(request.tools),
            **openai_response_format(request.output),
            **request.model.extra,
        }

    def _stream_error(self, chunk: dict[str, Any]) -> ProviderError:
        err = chunk.get("error", chunk)
        if not isinstance(err, dict):
            err = {"message": str(err)}
        status = _error_status(err)
        exc = classify(status, orjson.dumps(err), httpx.Headers(), self.display)
        exc.message += " (in the stream, after it had started)"
        return exc

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        self.check_configured()
        echo = EchoStripper(request.continuation)
        finish_reason = None
        usage = None
        async with self.upstream.stream(self._url(request), self._body(request), self._headers()) as response:
            async for sse in self.upstream.events(response):
                if sse.data.strip() == "[DONE]":
                    break
                if not sse.data.strip():
                    continue
                chunk = sse_json(sse, self.display)
                if not isinstance(chunk, dict):
                    raise ProviderError(f"{self.display} sent an unreadable stream event",
                                        code="upstream_invalid", retryable=True)
                if "error" in chunk or chunk.get("object") == "error":
                    raise self._stream_error(chunk)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    # Mistral may send content as a list of typed chunks (text / thinking).
                    if isinstance(content, list):
                        content = "".join(part.get("text", "") for part in content
                                          if isinstance(part, dict) and part.get("type") == "text")
                    if content:
                        text = echo.feed(content)
                        if text:
                            yield TextDelta(text)
                    for piece in tool_call_pieces(choice.get("delta") or {}):
                        yield piece
                    reason = choice.get("finish_reason")
                    if reason == "error":
                        raise ProviderError(f"{self.display} stopped the answer with an error",
                                            code="upstream_unavailable", retryable=True)
                    if reason:
                        finish_reason = FINISH_REASONS.get(reason, reason)
        self.check_ended(finish_reason, usage)
        assert finish_reason is not None and usage is not None  # check_ended raised otherwise
        tail = echo.flush()
        if tail:
            yield TextDelta(tail)
        yield one_call(request, finish_reason, int(usage.get("prompt_tokens", 0)),
                       int(usage.get("completion_tokens", 0)))

    async def embed(self, request: GenerationRequest) -> Embeddings:
        self.check_configured()
        embed = request.job.embed
        assert embed is not None  # an embedding job
        body = {"model": request.model.upstream, "input": list(embed.inputs), "encoding_format": "float"}
        url = self.endpoint(request, self.settings.mistral_base_url, "/embeddings")
        return openai_embeddings(await self.upstream.post_json(url, body, self._headers()), self.display)
