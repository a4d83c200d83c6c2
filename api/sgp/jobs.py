"""Asynchronous jobs: submit, read, follow the token stream, cancel."""

from __future__ import annotations

import contextlib
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.exceptions import RedisError

from api.accounts import caller_of
from api.deps import CurrentAccount, HubDep, ScopedCatalogDep, StoreDep
from api.jobs import public_view, submit
from api.metrics import track_sse
from api.openapi import SSE, streamed
from api.ratelimit import ratelimit_headers
from api.sgp.wire import ChatCompletionRequest
from api.sse import KEEPALIVE, SSE_HEADERS, sse
from api.streams import SHUTDOWN, follow
from shared import keys
from shared.events import END, ERROR, THROTTLED, last_event_seq
from shared.results import TERMINAL_STATUSES

router = APIRouter(prefix="/v4/jobs")


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(404, f"job {job_id!r} not found")


@router.post("", status_code=202)
async def create_job(body: ChatCompletionRequest, request: Request, account: CurrentAccount,
                     catalog: ScopedCatalogDep, store: StoreDep):
    record = await submit(body.to_request(), account, catalog, store, caller_of(request))
    headers = {"Location": f"/v4/jobs/{record['id']}",
               **await ratelimit_headers(store.redis, request.app.state.settings, account)}
    return JSONResponse(public_view(record), status_code=202, headers=headers)


@router.get("/{job_id}")
async def get_job(job_id: str, account: CurrentAccount, store: StoreDep):
    record = await store.get_for(job_id, account)
    if record is None:
        raise _not_found(job_id)
    if record["status"] == "running" and await store.redis.exists(keys.job_cancel(job_id)):
        record["status"] = "cancelling"  # its worker stops it within a quarter of a second
    return public_view(record)


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: str, account: CurrentAccount, store: StoreDep):
    """A queued or throttled job is cancelled at once; a running one answers ``cancelling``
    (its worker stops it, and it ends ``cancelled``); a finished one stays as it is."""
    record = await store.get_for(job_id, account)
    if record is None:
        raise _not_found(job_id)
    outcome, _ = await store.cancel(job_id, account, record["model"], record.get("batch_id", ""))
    record = await store.get(job_id) or record
    if outcome == "requested" and record["status"] == "running":
        record["status"] = "cancelling"
    return public_view(record)


def _parse_last_event_id(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        seq = int(value)
    except ValueError:
        raise HTTPException(
            400, f"Last-Event-ID must be an event id this API sent (an integer), not {value!r}") from None
    if not 0 <= seq < 2**63:
        raise HTTPException(400, "Last-Event-ID is out of range")
    return seq


@router.get("/{job_id}/stream", **streamed(SSE, description="the job's events as SSE"))
async def stream_job(
    job_id: str, request: Request, account: CurrentAccount, store: StoreDep, hub: HubDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[str | None, Query(alias="last_event_id")] = None,
):
    """Every event of the job from the start (or after ``Last-Event-ID``), then live ones."""
    start = _parse_last_event_id(last_event_id if last_event_id is not None else after)
    record = await store.get_for(job_id, account)
    if record is None:
        raise _not_found(job_id)
    redis = store.redis
    if record["status"] in TERMINAL_STATUSES and start >= await last_event_seq(redis, job_id):
        # Nothing will ever follow: 204 tells an EventSource to stop reconnecting.
        return Response(status_code=204)

    @track_sse("/v4/jobs/{job_id}/stream")
    async def events():
        yield b"retry: 1000\n\n"
        async for event in follow(redis, hub, job_id, after=start):
            if event is None:
                yield KEEPALIVE
                with contextlib.suppress(RedisError):  # unknown: follow() reads again and tells
                    if await redis.exists(keys.job(job_id)) == 0:
                        return
            elif event.type == SHUTDOWN:
                # This instance is stopping: reconnect (to another) with Last-Event-ID.
                yield sse(orjson.dumps({"reason": "server shutting down", "last_event_id": event.seq}).decode(),
                          event="reconnect")
                return
            elif event.type == END:
                yield sse(event.data, event="end", event_id=event.seq)
            elif event.type in (ERROR, THROTTLED):
                yield sse(event.data, event=event.type, event_id=event.seq)
            else:
                yield sse(event.data, event_id=event.seq)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
