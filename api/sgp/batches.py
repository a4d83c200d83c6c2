"""``/v4/batches``: submit many requests at once, follow them, fetch their results."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api import batches
from api.accounts import caller_of
from api.deps import CurrentAccount, LineFormatsDep, RedisDep, ScopedCatalogDep, SettingsDep
from api.openapi import JSONL, SSE, streamed
from api.request import CompletionRequest
from api.sgp.wire import ChatCompletionRequest
from api.sse import KEEPALIVE, SSE_HEADERS, sse
from shared import keys

router = APIRouter(prefix="/v4/batches")


def _line_request(body: dict[str, Any]) -> CompletionRequest:
    return ChatCompletionRequest.model_validate(body).to_request()


#: Batch lines in this door's format (any door's batch takes them).
LINE_FORMAT = batches.LineFormat("/v4/chat-completions", _line_request)


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[dict[str, Any]] = Field(min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    completion_window: str = "24h"


async def _own_batch(redis, batch_id: str, account: str) -> dict[str, str]:
    record = await batches.get_own(redis, batch_id, account)
    if record is None:
        raise HTTPException(404, f"batch {batch_id!r} not found")
    return record


def _file_lines(upload) -> Iterator[bytes]:
    """Lines of an uploaded file (spooled to disk by Starlette, read a line at a time)."""
    upload.file.seek(0)
    for raw in upload.file:
        yield raw.rstrip(b"\r\n")


BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the JSONL file, a request per line"},
        "metadata": {"type": "string", "description": "a JSON object of strings"},
        "completion_window": {"type": "string", "default": "24h"}}}},
    "application/json": {"schema": {"type": "object", "required": ["requests"], "properties": {
        "requests": {"type": "array", "items": {"type": "object"}},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "completion_window": {"type": "string", "default": "24h"}}}}}}}


@router.post("", status_code=201, openapi_extra=BATCH_BODY)
async def create_batch(request: Request, account: CurrentAccount, redis: RedisDep, catalog: ScopedCatalogDep,
                       settings: SettingsDep, formats: LineFormatsDep):
    """A batch of lines in any door's format (``url``: ``/v4/chat-completions``, ``/v1/chat/completions``)."""
    content_type = request.headers.get("content-type", "")
    metadata: Any = {}
    window = "24h"
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "upload the JSONL file as the multipart form field 'file'")
        raw_metadata = form.get("metadata")
        if isinstance(raw_metadata, str):
            try:
                metadata = orjson.loads(raw_metadata)
            except orjson.JSONDecodeError:
                raise HTTPException(400, "metadata must be a JSON object of strings") from None
        window = str(form.get("completion_window") or "24h")
        lines: Iterator[bytes] = _file_lines(upload)
    elif content_type.startswith("application/json"):
        # Read strictly (RFC 8259: no NaN or Infinity; an integer past 64 bits as a float), so
        # that each line is written back exactly as the client's validation will read it.
        try:
            body = BatchBody.model_validate(orjson.loads(await request.body()))
        except orjson.JSONDecodeError as exc:
            raise HTTPException(422, f"invalid batch body: not valid JSON: {exc}") from None
        except ValueError as exc:
            raise HTTPException(422, f"invalid batch body: {exc}") from None
        metadata, window = body.metadata, body.completion_window
        lines = (orjson.dumps(r) for r in body.requests)
    else:
        raise HTTPException(415, "send a JSONL file as multipart/form-data (field 'file') or a JSON "
                                 "body {\"requests\": [...]}")
    try:
        metadata = batches.check_metadata(metadata)
        batches.parse_window(window)
    except batches.LineError as exc:
        raise HTTPException(400, str(exc)) from None
    caller = caller_of(request)
    fields = {"key_id": caller.key_id} if caller and caller.key_id else {}
    if caller and caller.models is not None:
        fields["key_models"] = orjson.dumps(sorted(caller.models)).decode()
    batch_id = await batches.create(redis, account, lines, metadata, window, catalog, settings, formats,
                                    fields or None)
    return JSONResponse(batches.view(await redis.hgetall(keys.batch(batch_id))), status_code=201)


@router.get("")
async def list_batches(account: CurrentAccount, redis: RedisDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None):
    """The account's batches, newest first; ``after`` is the last id of the previous page."""
    try:
        return await batches.page(redis, account, limit, after)
    except batches.UnknownCursor:
        raise HTTPException(400, f"after: batch {after!r} is not one of yours") from None


@router.get("/{batch_id}")
async def get_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    return batches.view(await _own_batch(redis, batch_id, account))


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    return await batches.cancel(redis, await _own_batch(redis, batch_id, account))


@router.get("/{batch_id}/results", **streamed(JSONL, description="JSONL"))
async def batch_results(batch_id: str, account: CurrentAccount, redis: RedisDep):
    """One JSONL line per succeeded request (matched by custom_id; order not promised)."""
    await _own_batch(redis, batch_id, account)
    return StreamingResponse(batches.jsonl(redis, keys.batch_results(batch_id)), media_type="application/jsonl")


@router.get("/{batch_id}/errors", **streamed(JSONL, description="JSONL"))
async def batch_errors(batch_id: str, account: CurrentAccount, redis: RedisDep):
    """One JSONL line per failed, cancelled or expired request."""
    await _own_batch(redis, batch_id, account)
    return StreamingResponse(batches.jsonl(redis, keys.batch_errors(batch_id)), media_type="application/jsonl")


@router.get("/{batch_id}/stream", **streamed(SSE, description="SSE progress"))
async def batch_stream(batch_id: str, account: CurrentAccount, redis: RedisDep,
                       interval: Annotated[float, Query(ge=0.1, le=10)] = 0.5):
    """SSE progress: ``event: progress`` with the batch whenever it changes, then ``event: end``."""
    await _own_batch(redis, batch_id, account)

    async def events():
        last = None
        quiet = 0.0
        while True:
            record = await redis.hgetall(keys.batch(batch_id))
            if not record:
                return
            current = batches.view(record)
            data = orjson.dumps(current).decode()
            if current["status"] in batches.STATUSES_DONE:
                yield sse(data, event="end")
                return
            if data != last:
                yield sse(data, event="progress")
                last, quiet = data, 0.0
            elif quiet >= 15:
                yield KEEPALIVE
                quiet = 0.0
            await asyncio.sleep(interval)
            quiet += interval

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
