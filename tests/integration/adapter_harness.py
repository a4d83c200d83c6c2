"""Driving one adapter directly against the fake provider (no fleet)."""

from __future__ import annotations

import asyncio
from typing import Any

from api.prompts import job_spec
from api.sgp.wire import ChatCompletionRequest
from shared.catalog import ModelSpec, get_catalog
from shared.settings import Settings
from tests.conftest import fake_provider_settings
from worker.providers.base import (
    Completion,
    GenerationRequest,
    ProviderError,
    TextDelta,
)
from worker.providers.registry import load_adapter
from worker.providers.transport import make_client

HI = [{"role": "user", "content": "say something nice"}]

# Two system messages, two user turns in a row and two assistant turns in a row: what families
# that want one system prompt and alternating turns must merge.
MIXED_TURNS = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "hi there"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "ok"},
    {"role": "system", "content": "and brief"},
    {"role": "assistant", "content": "sure"},
    {"role": "user", "content": "go"},
]


def request_for(model: str, messages: list[dict], continuation: str = "", continuation_events: int = 0,
                job_id: str = "job_test", **body: Any) -> GenerationRequest:
    spec: ModelSpec = get_catalog().get(model)
    request = ChatCompletionRequest.model_validate({"model": model, "messages": messages, **body}).to_request()
    job = job_spec(request, spec, Settings().default_completion_reservation)
    return GenerationRequest(model=spec, job=job, continuation=continuation,
                             continuation_events=continuation_events, job_id=job_id)


def run_adapter(fake, family: str, request: GenerationRequest, **settings: Any) -> tuple[list[str], Completion]:
    """(text deltas, completion); raises the adapter's ProviderError."""

    async def go():
        provider_settings = fake_provider_settings(fake, **settings)
        client = make_client(provider_settings)
        adapter = load_adapter(family)(client, provider_settings)
        deltas, completion = [], None
        try:
            async for item in adapter.stream(request):
                if isinstance(item, TextDelta):
                    assert completion is None, "text after the completion"
                    deltas.append(item.text)
                else:
                    assert isinstance(item, Completion)
                    completion = item
        finally:
            await adapter.close()
            await client.aclose()
        assert completion is not None, "no completion"
        return deltas, completion

    return asyncio.run(go())


def adapter_error(fake, family: str, request: GenerationRequest, **settings: Any) -> ProviderError:
    try:
        run_adapter(fake, family, request, **settings)
    except ProviderError as exc:
        return exc
    raise AssertionError("the adapter did not fail")
