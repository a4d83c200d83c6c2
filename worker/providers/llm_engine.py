"""LLM-Engine / vLLM OpenAI-compatible completions: the open-weight models, fed the raw prompt
rendered from the chat template. A retried call continues exactly where the last one stopped:
the delivered text is appended to the prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from worker.providers.base import Completion, GenerationRequest, ProviderError, TextDelta
from worker.providers.http import HTTPProvider
from worker.providers.openai import FINISH_REASONS, openai_chunks


class LLMEngineProvider(HTTPProvider):
    family = "llm_engine"
    display = "LLM-Engine"

    def _url(self, request: GenerationRequest) -> str:
        base = request.spec.base_url or self.settings.llm_engine_base_url
        if not base:
            raise ProviderError(f"{self.display} is not configured: set LLM_ENGINE_BASE_URL",
                                code="model_unavailable")
        return base.rstrip("/") + "/completions"

    def _headers(self) -> dict[str, str]:
        key = self.settings.llm_engine_api_key
        return {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": request.spec.upstream,
            "prompt": (request.prompt or "") + request.continuation,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": params.get("temperature", 0.2),
        }
        if params.get("max_tokens") is not None:
            body["max_tokens"] = max(params["max_tokens"] - request.continuation_events, 1)
        if params.get("stop"):
            body["stop"] = params["stop"]
        for name in ("top_k", "top_p", "frequency_penalty", "presence_penalty"):
            if name in params:
                body[name] = params[name]
        body.update(request.spec.extra)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        if request.prompt is None:
            raise ProviderError(f"{self.display} needs a rendered prompt", code="invalid_request")
        finish_reason = None
        usage = None
        async for chunk in openai_chunks(self, self._url(request), self._body(request), self._headers()):
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("text"):
                    yield TextDelta(choice["text"])
                if choice.get("finish_reason"):
                    finish_reason = FINISH_REASONS.get(choice["finish_reason"], choice["finish_reason"])
        self.check_ended(finish_reason, usage)
        yield self.one_call(finish_reason, int(usage.get("prompt_tokens", 0)),
                            int(usage.get("completion_tokens", 0)), request.continuation_events)
