"""``POST /v4/chat-completions``: the SGP v4 contract, served through a job."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import CatalogDep, CurrentAccount, HubDep, SettingsDep, StoreDep
from api.sse import SSE_HEADERS, sse
from api.submission import submit
from shared.events import follow
from shared.jobs import END, ERROR
from shared.schemas import ChatCompletionRequest

router = APIRouter()

# How a failed job maps onto the synchronous response.
# How a failed job maps onto the synchronous response: the client's mistakes are 4xx, the
# upstream's and ours 5xx (a provider still rate-limiting after our retries is passed on as 429).
ERROR_STATUS = {
    "invalid_request": 400,
    "model_unavailable": 400,
    "context_length_exceeded": 400,
    "upstream_rejected": 400,
    "content_filter": 400,
    "upstream_rate_limited": 429,
    "upstream_auth": 502,
    "upstream_unavailable": 502,
    "upstream_unreachable": 502,
    "upstream_invalid": 502,
    "stream_cut": 502,
    "stream_interrupted": 502,
    "upstream_timeout": 504,
    "timeout": 504,
    "redelivery_limit": 500,
    "internal_error": 500,
}


@router.post("/v4/chat-completions")
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, account: CurrentAccount,
    catalog: CatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    job = await submit(body, account, catalog, store)
    job_id = job["id"]
    headers = {"x-chatfleet-job-id": job_id}
    redis = store.redis

    if body.stream:
        async def relay():
            finished = False
            try:
                async for event in follow(redis, hub, job_id):
                    if event is None:
                        yield b": ping\n\n"
                    elif event.type == END:
                        finished = True
                        return
                    elif event.type == ERROR:
                        finished = True
                        yield sse(event.data, event="error")
                        return
                    else:
                        yield sse(event.data)
            finally:
                if not finished:  # the client went away: nobody will read the rest
                    with contextlib.suppress(Exception):
                        await asyncio.shield(store.cancel(job_id))

        return StreamingResponse(relay(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    async def wait_for_end():
        async for event in follow(redis, hub, job_id):
            if event is not None and event.terminal:
                return event

    waiter = asyncio.create_task(wait_for_end())
    try:
        deadline = asyncio.get_running_loop().time() + settings.sync_timeout_seconds
        while not waiter.done():
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            if done:
                break
            if await request.is_disconnected():
                await store.cancel(job_id)
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            if asyncio.get_running_loop().time() > deadline:
                await store.cancel(job_id)
                return JSONResponse(
                    {"detail": f"no answer within {settings.sync_timeout_seconds:g} s; the job was cancelled"},
                    status_code=504, headers=headers,
                )
        event = waiter.result()
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiter

    if event.type == ERROR:
        error = orjson.loads(event.data)
        status = ERROR_STATUS.get(error.get("code"), 502)
        if status == 429:
            headers["Retry-After"] = "5"
        return JSONResponse({"detail": error.get("message"), "code": error.get("code")},
                            status_code=status, headers=headers)
    record = await store.get(job_id)
    if record is None or record.get("status") != "succeeded":
        return JSONResponse({"detail": "the request was cancelled"}, status_code=409, headers=headers)
    return JSONResponse(orjson.loads(record["result"]), headers=headers)
