"""``POST /v1/chat/completions``: OpenAI's chat completions, served through a job like the SGP route
(``api/completion.py``): the same admission, limits, usage, cancellation and ``x-chatfleet-job-id``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.completion import complete
from api.deps import CurrentAccount, HubDep, ScopedCatalogDep, SettingsDep, StoreDep
from api.openai.wire import ChatRequest, OpenAIAnswer
from api.openapi import SSE, answers

router = APIRouter()


@router.post("/chat/completions", responses=answers(SSE, description="the completion; with stream: chunks as SSE"))
async def create_chat_completion(
    body: ChatRequest, request: Request, account: CurrentAccount,
    catalog: ScopedCatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    answer = OpenAIAnswer(body.model, include_usage)
    return await complete(body.to_request(), request, account, catalog, store, hub, settings, answer)
