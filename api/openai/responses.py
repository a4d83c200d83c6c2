"""``/v1/responses``: OpenAI's Responses API on the fleet's jobs (``api/openai/responses_wire.py``).

A response is created as a job is, under the same limits, usage and retries; answered when it is
done, streamed as it is written, or, with ``background``, at once (``queued``), then polled,
streamed from any point (``starting_after``) and cancelled as the job is. A stored response lives
as long as its job (``CHATFLEET_JOB_RETENTION_SECONDS``), for its account only (another's: 404).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.accounts import caller_of
from api.completion import Answer, complete
from api.deps import CurrentAccount, HubDep, ScopedCatalogDep, SettingsDep, StoreDep
from api.jobs import submit
from api.metrics import track_sse
from api.openai.errors import OpenAIError, error_response
from api.openai.responses_wire import (
    STATUSES,
    InvalidParameter,
    ResponseEvents,
    ResponseRequest,
    finished_object,
    finished_state,
    job_id_of,
    output_items,
    response_id,
    response_object,
    sse_event,
    stored_record,
)
from api.openapi import SSE, answers
from api.sse import KEEPALIVE, SSE_HEADERS
from api.streams import SHUTDOWN, follow
from shared import keys
from shared.events import END, ERROR, THROTTLED
from shared.jobs import JobStore
from shared.results import TERMINAL_STATUSES

router = APIRouter()

FIELD = "response"  # the job record's field holding what the response keeps of its request
#: The most items a conversation continued by previous_response_id may hold.
MAX_HISTORY_ITEMS = 2_000


def _not_found(rid: str) -> OpenAIError:
    return OpenAIError(404, f"No response found with id {rid!r}.", "response_id", "not_found")


async def _stored(store: JobStore, rid: str, account: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    job_id = job_id_of(rid)
    record = await store.get_for(job_id, account) if job_id else None
    if record is None or not record.get(FIELD):
        raise _not_found(rid)
    assert job_id is not None  # a record was found under it
    return job_id, record, orjson.loads(record[FIELD])


def _view(rid: str, record: dict[str, str], stored: dict[str, Any]) -> dict[str, Any]:
    """The response as its job stands."""
    status = STATUSES.get(record.get("status", ""), "queued")
    if status == "completed" and record.get("result"):
        return finished_object(rid, stored, orjson.loads(record["result"]))
    if status == "failed":
        error = orjson.loads(record.get("error") or "{}")
        return response_object(rid, stored, status, [], None, error={
            "code": error.get("code") or "server_error", "message": error.get("message") or "the job failed"})
    return response_object(rid, stored, status, [], None)


async def _history(store: JobStore, account: str, previous: str | None) -> list[dict[str, Any]]:
    """The items of the conversation ``previous`` (a response id) ended with: its own history and
    input, then its output."""
    if previous is None:
        return []
    job_id = job_id_of(previous)
    record = await store.get_for(job_id, account) if job_id else None
    if record is None or not record.get(FIELD):
        raise OpenAIError(400, f"Previous response with id {previous!r} not found.", "previous_response_id",
                          "previous_response_not_found")
    if record.get("status") != "succeeded":
        raise OpenAIError(400, f"Previous response {previous!r} has not completed (it is "
                               f"{STATUSES.get(record.get('status', ''), 'queued')}): continue from a completed one",
                          "previous_response_id")
    stored = orjson.loads(record[FIELD])
    _, _, text, calls = finished_state(orjson.loads(record["result"]))
    items = stored["history"] + stored["input"] + output_items(previous, text, calls)
    if len(items) > MAX_HISTORY_ITEMS:
        raise OpenAIError(400, f"the conversation holds more than {MAX_HISTORY_ITEMS} items: start a new one",
                          "previous_response_id")
    return items


async def _keep(store: JobStore, job_id: str, stored: dict[str, Any]) -> None:
    await store.redis.hset(keys.job(job_id), FIELD, orjson.dumps(stored))


class ResponseAnswer(Answer):
    """A response answered when done, or streamed as it is written (``api/completion.py``)."""

    route = "/v1/responses"
    fails_before_streaming = True

    def __init__(self, stored: dict[str, Any], keep: bool):
        self.stored = stored
        self.keep = keep
        self.events: ResponseEvents | None = None
        self.started = False

    def bind(self, job_id: str) -> None:
        super().bind(job_id)
        self.rid = response_id(job_id)
        self.events = ResponseEvents(self.rid, self.stored)

    async def submitted(self, record: dict[str, str], store: JobStore) -> None:
        if self.keep:
            await _keep(store, record["id"], self.stored)

    def failure(self, status, message, code=None, headers=None, **extra):
        return error_response(status, message, None, code, headers)

    def result(self, body, headers):
        return JSONResponse(finished_object(self.rid, self.stored, body), headers=headers)

    def _begun(self) -> bytes:
        assert self.events is not None  # bound before any event
        if self.started:
            return b""
        self.started = True
        return self.events.begin()

    def stream_token(self, data):
        head = self._begun()
        assert self.events is not None
        return head + self.events.token(data)

    def stream_error(self, data):
        head = self._begun()
        assert self.events is not None
        return head + self.events.error(data)

    def stream_end(self, data=""):
        head = self._begun()
        assert self.events is not None
        status = orjson.loads(data).get("status", "succeeded") if data else "succeeded"
        return head + self.events.end(status)

    def stream_shutdown(self, job_id, seq):
        assert self.events is not None
        resume = (f"GET /v1/responses/{self.rid}?stream=true&starting_after={self.events.seq}" if self.keep
                  else "the response was not stored (store: false), so it cannot be resumed")
        return sse_event({"type": "error", "sequence_number": self.events.seq + 1, "code": "server_shutting_down",
                          "message": f"this API instance is restarting; the response continues: {resume}",
                          "param": None})


def _replay(store: JobStore, hub, job_id: str, stored: dict[str, Any], after: int) -> StreamingResponse:
    """The response's stream from its start, sent after its event ``after``, then live."""
    rid = response_id(job_id)

    @track_sse("/v1/responses/{response_id}")
    async def relay() -> AsyncIterator[bytes]:
        events = ResponseEvents(rid, stored, after)
        head = events.begin()
        if head:
            yield head
        async for event in follow(store.redis, hub, job_id):
            if event is None:
                yield KEEPALIVE
            elif event.type == SHUTDOWN:
                yield sse_event({"type": "error", "sequence_number": events.seq + 1, "code": "server_shutting_down",
                                 "param": None, "message": "this API instance is restarting; resume with GET "
                                 f"/v1/responses/{rid}?stream=true&starting_after={events.seq}"})
                return
            elif event.type == END:
                yield events.end(orjson.loads(event.data).get("status", "succeeded"))
                return
            elif event.type == ERROR:
                yield events.error(event.data)
                return
            elif event.type != THROTTLED:
                chunk = events.token(event.data)
                if chunk:
                    yield chunk

    return StreamingResponse(relay(), media_type="text/event-stream", headers={
        **SSE_HEADERS, "x-chatfleet-job-id": job_id})


@router.post("/responses", responses=answers(SSE, description="the response; with stream: its events as SSE"))
async def create_response(
    body: ResponseRequest, request: Request, account: CurrentAccount,
    catalog: ScopedCatalogDep, store: StoreDep, hub: HubDep, settings: SettingsDep,
):
    history = await _history(store, account, body.previous_response_id)
    stored = stored_record(body, history)
    try:
        completion = body.to_request(history)
        orjson.dumps(stored)
    except InvalidParameter as exc:
        raise OpenAIError(400, f"{exc.param}: {exc}", exc.param, exc.code) from None
    except orjson.JSONEncodeError:
        raise OpenAIError(400, "the request holds text that is not valid Unicode (a lone surrogate): send it as "
                               "UTF-8 text") from None
    if not body.background:
        return await complete(completion, request, account, catalog, store, hub, settings,
                              ResponseAnswer(stored, body.store))
    job = await submit(completion, account, catalog, store, caller_of(request))
    await _keep(store, job["id"], stored)
    if body.stream:
        return _replay(store, hub, job["id"], stored, -1)
    return JSONResponse(response_object(response_id(job["id"]), stored, "queued", [], None),
                        headers={"x-chatfleet-job-id": job["id"]})


@router.get("/responses/{response_id}", responses=answers(SSE, description="the response; with stream: its events"))
async def get_response(
    response_id: str, account: CurrentAccount, store: StoreDep, hub: HubDep,
    stream: bool = False, starting_after: Annotated[int | None, Query(ge=-1, lt=2**31)] = None,
):
    job_id, record, stored = await _stored(store, response_id, account)
    if stream:
        return _replay(store, hub, job_id, stored, -1 if starting_after is None else starting_after)
    if starting_after is not None:
        raise OpenAIError(400, "starting_after is only allowed with stream=true", "starting_after")
    return _view(response_id, record, stored)


@router.post("/responses/{response_id}/cancel")
async def cancel_response(response_id: str, account: CurrentAccount, store: StoreDep):
    """A background response stops as its job does (upstream too); a finished one stays as it is."""
    job_id, record, stored = await _stored(store, response_id, account)
    if not stored["echo"]["background"]:
        raise OpenAIError(400, "Only responses created with background: true can be cancelled.", "response_id")
    await store.cancel(job_id, account, record["model"], "")
    for _ in range(40):  # a running job's worker stops it within a quarter of a second
        record = await store.get(job_id) or record
        if record.get("status") in TERMINAL_STATUSES:
            break
        await asyncio.sleep(0.05)
    return _view(response_id, record, stored)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, account: CurrentAccount, store: StoreDep):
    job_id, record, _ = await _stored(store, response_id, account)
    if record.get("status") not in TERMINAL_STATUSES:
        with contextlib.suppress(Exception):
            await store.cancel(job_id, account, record["model"], "")
    await store.redis.hdel(keys.job(job_id), FIELD)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str, account: CurrentAccount, store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str | None = None,
):
    _, _, stored = await _stored(store, response_id, account)
    items = [{"id": item.get("id") or f"item_{response_id.removeprefix('resp_')}_{i}", **item}
             for i, item in enumerate(stored["input"])]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

