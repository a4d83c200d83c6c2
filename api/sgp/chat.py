"""``POST /v4/chat-completions``: the SGP v4 contract, served through a job (``api/completion.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.completion import complete
from api.deps import CurrentAccount, HubDep, ScopedCatalogDep, SettingsDep, StoreDep
from api.openapi import SSE, answers
from api.sgp.answer import SGPAnswer
from api.sgp.wire import ChatCompletionRequest

router = APIRouter()


@router.post("/v4/chat-completions", responses=answers(SSE, description="the completion; with stream: SSE events"))
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, account: CurrentAccount,
    catalog: ScopedCatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    return await complete(body.to_request(), request, account, catalog, store, hub, settings, SGPAnswer())
