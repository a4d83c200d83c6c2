"""A synchronous chat completion served through a job, for either front door.

``complete`` submits the job, waits for its admission (a job still throttled after
``CHATFLEET_SYNC_ADMISSION_WAIT_SECONDS`` is cancelled and answered 429), then streams its
events to the client or waits for its end. A client that goes away cancels its job. What the
client reads is worded by an ``Answer``, each door's own (``api/sgp/answer.py``,
``api/openai/wire.py``); the flow is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.accounts import caller_of
from api.failures import UPSTREAM_RETRY_AFTER_SECONDS, failure_status
from api.jobs import submit
from api.metrics import track_sse
from api.ratelimit import ratelimit_headers
from api.request import CompletionRequest
from api.sse import KEEPALIVE, SSE_HEADERS
from api.streams import SHUTDOWN, follow
from shared.catalog import Catalog
from shared.events import END, ERROR, THROTTLED
from shared.jobs import JobStore
from shared.settings import Settings


class NotAdmitted(Exception):
    def __init__(self, retry_after: float, reason: str):
        self.retry_after = retry_after
        self.reason = reason


class Answer:
    """How one front door words a synchronous completion. ``failure`` answers with an error
    status; the ``stream_*`` methods give the bytes of a streamed answer."""

    route: str  # the route template, for the SSE gauge
    job_id = ""
    #: A job that fails before its first token is answered with an error status, not a stream.
    fails_before_streaming = False

    def bind(self, job_id: str) -> None:
        """The job behind the answer, known once it is submitted."""
        self.job_id = job_id

    def failure(self, status: int, message: str, code: str | None = None,
                headers: dict[str, str] | None = None, **extra: Any) -> Response:
        raise NotImplementedError

    def result(self, body: dict[str, Any], headers: dict[str, str]) -> Response:
        """The answer of a succeeded job (``body``: its SGP result)."""
        raise NotImplementedError

    def stream_token(self, data: str) -> bytes | None:
        """A token event (``data``: its SGP chunk) as the client reads it; None: nothing."""
        raise NotImplementedError

    def stream_error(self, data: str) -> bytes:
        """An error event (``data``: ``{code, message}`` as JSON)."""
        raise NotImplementedError

    def stream_shutdown(self, job_id: str, seq: int) -> bytes:
        raise NotImplementedError

    def stream_end(self, data: str = "") -> bytes:
        """The end event (``data``: ``{status}`` as JSON)."""
        return b""

    #: Whether a client that goes away mid-stream cancels the job (not a background response's).
    cancel_on_disconnect = True

    async def submitted(self, record: dict[str, str], store: JobStore) -> None:
        """The job is recorded (``record``); what the door keeps beside it is written here."""
        return None


async def first_admitted_event(events, admission_deadline: float, overall_deadline: float):
    """The job's first event that is not a wait. A job throttled past the admission deadline
    raises NotAdmitted (time spent queued for a worker does not count); nothing at all before
    the overall deadline raises TimeoutError."""
    throttled: dict | None = None
    while True:
        deadline = overall_deadline if throttled is None else min(admission_deadline, overall_deadline)
        try:
            event = await asyncio.wait_for(anext(events), max(deadline - time.monotonic(), 0))
        except TimeoutError:
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


def job_failure(answer: Answer, error: dict[str, Any], headers: dict[str, str]) -> Response:
    code = error.get("code")
    status = failure_status(code)
    if status == 429 and code != "budget_exceeded":  # a spent budget has no time to retry after
        headers = {**headers, "Retry-After": str(UPSTREAM_RETRY_AFTER_SECONDS)}
    return answer.failure(status, error.get("message") or "the job failed", code, headers)


async def complete(body: CompletionRequest, request: Request, account: str, catalog: Catalog, store: JobStore,
                   hub, settings: Settings, answer: Answer) -> Response:
    job = await submit(body, account, catalog, store, caller_of(request))
    job_id = job["id"]
    answer.bind(job_id)
    await answer.submitted(job, store)
    redis = store.redis
    headers = {"x-chatfleet-job-id": job_id}
    events = follow(redis, hub, job_id)
    finished = False

    async def cancel_job() -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(store.cancel(job_id, account, job["model"]))

    async def close_events() -> None:
        with contextlib.suppress(Exception):
            await events.aclose()

    timed_out = f"no answer within {settings.sync_timeout_seconds:g} s; the job was cancelled"
    started = time.monotonic()
    try:
        first = await first_admitted_event(events, started + settings.sync_admission_wait_seconds,
                                           started + settings.sync_timeout_seconds)
    except NotAdmitted as exc:
        await cancel_job()
        await close_events()
        headers.update(await ratelimit_headers(redis, settings, account))
        retry_after = math.ceil(exc.retry_after)
        return answer.failure(429, f"rate limited: {exc.reason}; retry after {retry_after} s", "rate_limited",
                              {**headers, "Retry-After": str(retry_after)})
    except TimeoutError:
        await cancel_job()
        await close_events()
        return answer.failure(504, timed_out, headers=headers)
    except BaseException:
        await cancel_job()
        await close_events()
        raise
    # After admission, so that the remaining counts include this request.
    headers.update(await ratelimit_headers(redis, settings, account))

    if body.stream and first is not None and first.type == ERROR and answer.fails_before_streaming:
        await close_events()
        return job_failure(answer, orjson.loads(first.data), headers)

    if body.stream:
        @track_sse(answer.route)
        async def relay() -> AsyncIterator[bytes]:
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
                        yield answer.stream_shutdown(job_id, event.seq)
                        return
                    elif event.type == END:
                        finished = True
                        tail = answer.stream_end(event.data)
                        if tail:
                            yield tail
                        return
                    elif event.type == ERROR:
                        finished = True
                        yield answer.stream_error(event.data)
                        return
                    elif event.type != THROTTLED:
                        chunk = answer.stream_token(event.data)
                        if chunk:
                            yield chunk
                    event = await anext(events)
            finally:
                await close_events()
                if not finished and answer.cancel_on_disconnect:  # the client went away: nobody reads the rest
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
                return answer.failure(499, "client disconnected")
            if time.monotonic() > deadline:
                await cancel_job()
                return answer.failure(504, timed_out, headers=headers)
        event = waiter.result()
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiter
        await close_events()

    if event.type == SHUTDOWN:
        return answer.failure(503, f"this API instance is restarting; the job continues: GET /v4/jobs/{job_id}",
                              "server_shutting_down", {**headers, "Retry-After": "1"}, job_id=job_id)
    if event.type == ERROR:
        return job_failure(answer, orjson.loads(event.data), headers)
    record = await store.get(job_id)
    if record is None or record.get("status") != "succeeded":
        return answer.failure(409, "the request was cancelled", headers=headers)
    return answer.result(orjson.loads(record["result"]), headers)
