"""LLM-Engine / vLLM OpenAI-compatible completions: the open-weight models, fed the raw prompt
rendered from the chat template. A retried call continues exactly where the last one stopped:
the delivered text is appended to the prompt (``continuation.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from worker.providers.base import Completion, GenerationRequest, ProviderError, TextDelta
from worker.providers.continuation import max_tokens_left, one_call
from worker.providers.http import HTTPProvider
from worker.providers.openai import Choices, openai_chunks, openai_sampling

SAMPLING = ("top_k", "top_p", "frequency_penalty", "presence_penalty", "seed")


class LLMEngineProvider(HTTPProvider):
    family = "llm_engine"
    display = "LLM-Engine"

    def _url(self, request: GenerationRequest) -> str:
        if not (request.spec.base_url or self.settings.llm_engine_base_url):
            raise ProviderError(f"{self.display} is not configured: set LLM_ENGINE_BASE_URL",
                                code="model_unavailable")
        return self.endpoint(request, self.settings.llm_engine_base_url, "/completions")

    key_optional = True  # a self-hosted vLLM may take none

    def _headers(self, request: GenerationRequest) -> dict[str, str]:
        key = self.settings.llm_engine_api_key
        if key is None or not self.key_allowed(request, self.settings.llm_engine_base_url):
            return {}
        return {"authorization": f"Bearer {key.get_secret_value()}"}

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        return {
            "model": request.spec.upstream,
            "prompt": (request.prompt or "") + request.continuation,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": request.upstream_user,
            **openai_sampling(request.params, max_tokens_left(request), SAMPLING),
            **request.spec.extra,
        }

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        if request.prompt is None:
            raise ProviderError(f"{self.display} needs a rendered prompt", code="invalid_request")
        choices = Choices(lambda choice: choice.get("text"))
        async for text in choices.texts(openai_chunks(self, self._url(request), self._body(request), self._headers(request))):
            yield TextDelta(text)
        self.check_ended(choices.finish_reason, choices.usage)
        usage = choices.usage
        yield one_call(request, choices.finish_reason, int(usage.get("prompt_tokens", 0)),
                       int(usage.get("completion_tokens", 0)))
