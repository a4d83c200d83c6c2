"""``POST /v4/chat-completions``: the SGP v4 contract, served through a job."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.metrics import track_sse
from api.deps import CatalogDep, CurrentAccount, HubDep, SettingsDep, StoreDep
from api.ratelimit import ratelimit_headers
from api.sse import KEEPALIVE, SSE_HEADERS, sse
from api.jobs import submit
from api.streams import SHUTDOWN, follow
from shared.events import END, ERROR, THROTTLED, Event
from shared.schemas import ChatCompletionRequest

router = APIRouter()

# How a failed job maps onto the synchronous response: the client's mistakes are 4xx, the
# upstream's and ours 5xx (a provider still rate-limiting after our retries is passed on as 429).
ERROR_STATUS = {
    "invalid_request": 400,
    "model_unavailable": 400,
    "context_length_exceeded": 400,
    "upstream_rejected": 400,
    "content_filter": 400,
    "limit_exceeded": 400,
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


class NotAdmitted(Exception):
    def __init__(self, retry_after: float, reason: str):
        self.retry_after = retry_after
        self.reason = reason


async def first_admitted_event(events, admission_deadline: float, overall_deadline: float):
    """The job's first event that is not a wait. A job throttled past the admission deadline
    raises NotAdmitted (time spent queued for a worker does not count); nothing at all before
    the overall deadline raises TimeoutError."""
    throttled: dict | None = None
    while True:
        deadline = overall_deadline if throttled is None else min(admission_deadline, overall_deadline)
        try:
            event = await asyncio.wait_for(anext(events), max(deadline - time.monotonic(), 0))
        except asyncio.TimeoutError:
            if throttled is None:
                raise
            next_try = throttled.get("next_try_epoch", time.time() + 1)
            raise NotAdmitted(max(next_try - time.time(), 1), throttled.get("reason", "rate limited")) from None
        if event is None:
            continue
        if event.type == THROTTLED:
            throttled = orjson.loads(event.data)
            continue
        return event


def error_response(event: Event, headers: dict[str, str]) -> JSONResponse:
    error = orjson.loads(event.data)
    status = ERROR_STATUS.get(error.get("code"), 502)
    if status == 429:
        headers = {**headers, "Retry-After": "5"}
    return JSONResponse({"detail": error.get("message"), "code": error.get("code")},
                        status_code=status, headers=headers)


@router.post("/v4/chat-completions")
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, account: CurrentAccount,
    catalog: CatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    job = await submit(body, account, catalog, store)
    job_id = job["id"]
    redis = store.redis
    headers = {"x-chatfleet-job-id": job_id}
    events = aiter(follow(redis, hub, job_id))
    finished = False

    async def cancel_job() -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(store.cancel(job_id, account, job["model"]))

    async def close_events() -> None:
        with contextlib.suppress(Exception):
            await events.aclose()

    started = time.monotonic()
    try:
        first = await first_admitted_event(events, started + settings.sync_admission_wait_seconds,
                                           started + settings.sync_timeout_seconds)
    except NotAdmitted as exc:
        await cancel_job()
        await close_events()
        headers.update(await ratelimit_headers(redis, request.app.state.settings, account))
        return JSONResponse(
            {"detail": f"rate limited: {exc.reason}; retry after {math.ceil(exc.retry_after)} s",
             "code": "rate_limited"},
            status_code=429, headers={**headers, "Retry-After": str(math.ceil(exc.retry_after))},
        )
    except asyncio.TimeoutError:
        await cancel_job()
        await close_events()
        return JSONResponse(
            {"detail": f"no answer within {settings.sync_timeout_seconds:g} s; the job was cancelled"},
            status_code=504, headers=headers)
    except BaseException:
        await cancel_job()
        await close_events()
        raise
    # After admission, so that the remaining counts include this request.
    headers.update(await ratelimit_headers(redis, request.app.state.settings, account))

    if body.stream:
        @track_sse("/v4/chat-completions")
        async def relay():
            nonlocal finished
            try:
                event = first
                while True:
                    if event is None:
                        yield KEEPALIVE
                    elif event.type == SHUTDOWN:
                        # The job goes on; this instance is stopping. Tell the client where
                        # to pick it up, and do not cancel it.
                        finished = True
                        yield sse(orjson.dumps({
                            "code": "server_shutting_down",
                            "message": f"this API instance is restarting; the job continues: follow "
                                       f"/v4/jobs/{job_id}/stream with Last-Event-ID: {event.seq}",
                            "job_id": job_id, "last_event_id": event.seq}).decode(), event="error")
                        return
                    elif event.type == END:
                        finished = True
                        return
                    elif event.type == ERROR:
                        finished = True
                        yield sse(event.data, event="error")
                        return
                    elif event.type != THROTTLED:
                        yield sse(event.data)
                    event = await anext(events)
            finally:
                await close_events()
                if not finished:  # the client went away: nobody will read the rest
                    await cancel_job()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    async def wait_for_end(event):
        while event is None or not (event.terminal or event.type == SHUTDOWN):
            event = await anext(events)
        return event

    waiter = asyncio.create_task(wait_for_end(first))
    try:
        deadline = started + settings.sync_timeout_seconds
        while not waiter.done():
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            if done:
                break
            if await request.is_disconnected():
                await cancel_job()
                return JSONResponse({"detail": "client disconnected"}, status_code=499)
            if time.monotonic() > deadline:
                await cancel_job()
                return JSONResponse(
                    {"detail": f"no answer within {settings.sync_timeout_seconds:g} s; the job was cancelled"},
                    status_code=504, headers=headers,
                )
        event = waiter.result()
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiter
        await close_events()

    if event.type == SHUTDOWN:
        return JSONResponse(
            {"detail": f"this API instance is restarting; the job continues: GET /v4/jobs/{job_id}",
             "code": "server_shutting_down", "job_id": job_id},
            status_code=503, headers={**headers, "Retry-After": "1"})
    if event.type == ERROR:
        return error_response(event, headers)
    record = await store.get(job_id)
    if record is None or record.get("status") != "succeeded":
        return JSONResponse({"detail": "the request was cancelled"}, status_code=409, headers=headers)
    return JSONResponse(orjson.loads(record["result"]), headers=headers)
