"""``/v4/batches``: submit many requests at once, follow them, fetch their results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CatalogDep, CurrentAccount, RedisDep, SettingsDep
from api.sse import KEEPALIVE, SSE_HEADERS, sse
from shared import keys
from shared.batches import (
    MAX_REPORTED_ERRORS, STATUSES_DONE, LineError, new_batch_id, parse_window, validate_lines, view,
)
from shared.provider_config import get_provider_settings

router = APIRouter(prefix="/v4/batches")

MAX_METADATA_KEYS = 16
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[dict[str, Any]] = Field(min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    completion_window: str = "24h"


def _not_found(batch_id: str) -> HTTPException:
    return HTTPException(404, f"batch {batch_id!r} not found")


async def _own_batch(redis, batch_id: str, account: str) -> dict[str, str]:
    record = await redis.hgetall(keys.batch(batch_id))
    if not record or record.get("account_id") != account:
        raise _not_found(batch_id)
    return record


def _check_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()):
        raise HTTPException(400, f"metadata: at most {MAX_METADATA_KEYS} string keys (64 chars) "
                                 "with string values (512 chars)")
    return metadata


async def _stage(redis, batch_id: str, account: str, lines: Iterator[bytes], catalog) -> tuple[int, list, int]:
    """Validate every line and stage the valid ones; returns (lines, reported errors, error count).
    Runs the CPU work on a thread, a chunk at a time, and writes each chunk from the loop."""
    providers = get_provider_settings()
    chunks = validate_lines(lines, account, catalog, providers)
    total, errors, error_count = 0, [], 0

    def next_chunk():
        return next(chunks, None)

    while (chunk := await anyio.to_thread.run_sync(next_chunk)) is not None:
        entries, chunk_errors = chunk
        total += len(entries) + len(chunk_errors)
        error_count += len(chunk_errors)
        errors.extend(chunk_errors[: max(MAX_REPORTED_ERRORS - len(errors), 0)])
        if entries and not error_count:  # once a line is bad nothing will run: stop staging
            await redis.rpush(keys.batch_pending(batch_id), *entries)
    return total, errors, error_count


def _file_lines(upload) -> Iterator[bytes]:
    """Lines of an uploaded file (spooled to disk by Starlette, read a line at a time)."""
    upload.file.seek(0)
    for raw in upload.file:
        yield raw.rstrip(b"\r\n")


@router.post("", status_code=201)
async def create_batch(request: Request, account: CurrentAccount, redis: RedisDep, catalog: CatalogDep,
                       settings: SettingsDep):
    content_type = request.headers.get("content-type", "")
    metadata: dict[str, str] = {}
    window = "24h"
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "upload the JSONL file as the multipart form field 'file'")
        if isinstance(form.get("metadata"), str):
            try:
                metadata = orjson.loads(form["metadata"])
            except orjson.JSONDecodeError:
                raise HTTPException(400, "metadata must be a JSON object of strings") from None
        window = str(form.get("completion_window") or "24h")
        lines: Iterator[bytes] = _file_lines(upload)
    elif content_type.startswith("application/json"):
        try:
            body = BatchBody.model_validate_json(await request.body())
        except ValueError as exc:
            raise HTTPException(422, f"invalid batch body: {exc}") from None
        metadata, window = body.metadata, body.completion_window
        lines = (orjson.dumps(r) for r in body.requests)
    else:
        raise HTTPException(415, "send a JSONL file as multipart/form-data (field 'file') or a JSON "
                                 "body {\"requests\": [...]}")
    if not isinstance(metadata, dict):
        raise HTTPException(400, "metadata must be a JSON object of strings")
    metadata = _check_metadata(metadata)
    try:
        window_seconds = parse_window(window)
    except LineError as exc:
        raise HTTPException(400, str(exc)) from None

    batch_id = new_batch_id()
    now = time.time()
    await redis.hset(keys.batch(batch_id), mapping={
        "id": batch_id, "account_id": account, "status": "validating", "created_at": repr(now),
        "completion_window": window, "metadata": orjson.dumps(metadata).decode(),
        "total": 0, "completed": 0, "failed": 0,
    })
    await redis.zadd(keys.account_batches(account), {batch_id: now})
    total, errors, error_count = await _stage(redis, batch_id, account, lines, catalog)
    retention = max(settings.job_retention_seconds, window_seconds + 86400)
    if total == 0:
        errors, error_count = [{"line": 0, "code": "empty_batch", "message": "the batch has no lines"}], 1
    if error_count:
        # Refused whole: nothing runs; every bad line is reported with its number.
        await redis.delete(keys.batch_pending(batch_id))
        await redis.hset(keys.batch(batch_id), mapping={
            "status": "failed", "failed_at": repr(time.time()), "total": total,
            "errors": orjson.dumps({"object": "list", "data": errors, "total": error_count}).decode(),
        })
    else:
        started = time.time()
        await redis.hset(keys.batch(batch_id), mapping={
            "status": "in_progress", "in_progress_at": repr(started), "total": total,
            "expires_at": repr(now + window_seconds),
        })
        await redis.zadd(keys.ACTIVE_BATCHES, {batch_id: now})
    for key in (keys.batch(batch_id), keys.batch_pending(batch_id), keys.batch_results(batch_id),
                keys.batch_errors(batch_id)):
        await redis.expire(key, retention)
    return JSONResponse(view(await redis.hgetall(keys.batch(batch_id))), status_code=201)


@router.get("")
async def list_batches(account: CurrentAccount, redis: RedisDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None):
    """The account's batches, newest first; ``after`` is the last id of the previous page."""
    max_score = "+inf"
    if after is not None:
        score = await redis.zscore(keys.account_batches(account), after)
        if score is None:
            raise HTTPException(400, f"after: batch {after!r} is not one of yours")
        max_score = f"({score}"
    ids = await redis.zrevrangebyscore(keys.account_batches(account), max_score, "-inf", start=0, num=limit + 1)
    page, has_more = ids[:limit], len(ids) > limit
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in page:
            pipe.hgetall(keys.batch(batch_id))
        records = await pipe.execute()
    data = [view(r) for r in records if r]
    return {"object": "list", "data": data, "has_more": has_more, "last_id": data[-1]["id"] if data else None}


@router.get("/{batch_id}")
async def get_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    return view(await _own_batch(redis, batch_id, account))


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    record = await _own_batch(redis, batch_id, account)
    if record["status"] in ("in_progress", "validating") and not record.get("ending"):
        await redis.hset(keys.batch(batch_id), mapping={
            "status": "cancelling", "ending": "cancelled", "cancelling_at": repr(time.time())})
    return view(await redis.hgetall(keys.batch(batch_id)))


def _jsonl(redis, key: str):
    async def lines():
        start = 0
        while True:
            chunk = await redis.lrange(key, start, start + 999)
            if not chunk:
                return
            yield ("\n".join(chunk) + "\n").encode()
            start += len(chunk)
    return StreamingResponse(lines(), media_type="application/jsonl")


@router.get("/{batch_id}/results")
async def batch_results(batch_id: str, account: CurrentAccount, redis: RedisDep):
    """One JSONL line per succeeded request (matched by custom_id; order not promised)."""
    await _own_batch(redis, batch_id, account)
    return _jsonl(redis, keys.batch_results(batch_id))


@router.get("/{batch_id}/errors")
async def batch_errors(batch_id: str, account: CurrentAccount, redis: RedisDep):
    """One JSONL line per failed, cancelled or expired request."""
    await _own_batch(redis, batch_id, account)
    return _jsonl(redis, keys.batch_errors(batch_id))


@router.get("/{batch_id}/stream")
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
            current = view(record)
            data = orjson.dumps(current).decode()
            if current["status"] in STATUSES_DONE:
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
