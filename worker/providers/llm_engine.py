"""LLM-Engine / vLLM OpenAI-compatible completions: the open-weight models, fed the raw prompt
rendered from the chat template. A retried call continues exactly where the last one stopped:
the delivered text is appended to the prompt (``continuation.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from worker.providers.base import Completion, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.providers.bodies import given
from worker.providers.constrained import Constrained
from worker.providers.continuation import one_call
from worker.providers.http import HTTPProvider
from worker.providers.openai import Choices, openai_chunks, openai_sampling


class LLMEngineProvider(HTTPProvider):
    family = "llm_engine"
    display = "LLM-Engine"

    def _url(self, request: GenerationRequest) -> str:
        if not (request.model.base_url or self.settings.llm_engine_base_url):
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
        p = request.params
        schema = Constrained(request).schema
        # vLLM's structured outputs: the answer constrained to the schema as it is generated.
        constrained = ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
                       if schema is not None else {})
        return {
            "model": request.model.upstream,
            "prompt": (request.prompt or "") + request.continuation,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": request.upstream_user,
            **openai_sampling(p, request.tokens_left()),
            **given(top_k=p.top_k, top_p=p.top_p, frequency_penalty=p.frequency_penalty,
                    presence_penalty=p.presence_penalty, seed=p.seed),
            **constrained,
            **request.model.extra,
        }

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        if request.prompt is None:
            raise ProviderError(f"{self.display} needs a rendered prompt", code="invalid_request")
        constrained = Constrained(request)
        done = constrained.delivered(request.job.typical_prompt_tokens, request.continuation_events)
        if done is not None:
            yield done
            return
        choices = Choices(lambda choice: choice.get("text"))
        chunks = openai_chunks(self, self._url(request), self._body(request), self._headers(request))
        async for text in choices.texts(chunks):
            if not isinstance(text, str):
                continue
            if constrained.active:
                constrained.hold(text)
            else:
                yield TextDelta(text)
        self.check_ended(choices.finish_reason, choices.usage)
        usage = choices.usage
        assert choices.finish_reason is not None and usage is not None  # check_ended raised otherwise
        finish = choices.finish_reason
        if constrained.active:
            items, finish = constrained.answer(finish)
            for item in items:
                yield item
        yield one_call(request, finish, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
