"""``/v1/batches``: OpenAI's Batch API on the fleet's batches (``api/batches.py``).

A batch is created from an uploaded file (``input_file_id``) of ``/v1/chat/completions``,
``/v1/responses`` or ``/v1/embeddings`` lines (the endpoint it names),
each run as a job like any other; its statuses are OpenAI's. Once it is over, its results and its
errors are files (``output_file_id``, ``error_file_id``) whose lines have OpenAI's shape:
``{id, custom_id, response: {status_code, request_id, body}, error}``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from api import batches, files
from api.deps import CurrentAccount, CurrentCaller, RedisDep, ValidationsDep
from api.failures import failure_status
from api.openai.embeddings import EmbeddingRequest, embedding_list
from api.openai.errors import OpenAIError, error_body
from api.openai.responses_wire import (
    InvalidParameter,
    ResponseRequest,
    finished_object,
    response_id,
)
from api.openai.wire import ChatRequest, completion_object
from api.request import CompletionRequest
from shared import keys

router = APIRouter()

ENDPOINT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (ENDPOINT, RESPONSES, EMBEDDINGS)
WINDOW = "24h"
SGP_ENDPOINT = "/v4/chat-completions"
FRONT = "openai"  # the batch record's ``front``: created through this door
# Lines that never ran have no response, only an error (OpenAI's shape for expired lines).
NEVER_RAN = frozenset({"batch_expired", "batch_cancelled", "cancelled"})


def _line_request(body: dict[str, Any]) -> CompletionRequest:
    return ChatRequest.model_validate(body).to_request()


def _response_line(body: dict[str, Any]) -> CompletionRequest:
    request = ResponseRequest.model_validate(body)
    for name in ("previous_response_id", "background", "stream"):
        if getattr(request, name):
            raise batches.LineError(f"{name} is not available in a batch line: each line is a response of its own")
    try:
        return request.to_request([])
    except InvalidParameter as exc:
        raise batches.LineError(f"{exc.param}: {exc}") from None


def _embedding_line(body: dict[str, Any]) -> CompletionRequest:
    return EmbeddingRequest.model_validate(body).to_request()


#: Batch lines in this door's formats, one per endpoint (any door's batch takes them; a /v1 batch
#: takes those of the endpoint it names).
LINE_FORMAT = batches.LineFormat(ENDPOINT, _line_request)
LINE_FORMATS = (LINE_FORMAT, batches.LineFormat(RESPONSES, _response_line),
                batches.LineFormat(EMBEDDINGS, _embedding_line))


def _batch_response(job_id: str, model: str, created: int, body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/responses line's response object (what it repeats of its request: its model)."""
    stored = {"created_at": created, "echo": {"model": model, "metadata": {}, "background": False, "store": False}}
    return finished_object(response_id(job_id), stored, body)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _ts(value: str | None) -> int | None:
    return int(float(value)) if value else None


def output_file_ids(batch_id: str) -> tuple[str, str]:
    suffix = batch_id.removeprefix("batch_")
    return f"file-out-{suffix}", f"file-err-{suffix}"


def _line_id(batch_id: str, item: dict[str, Any]) -> str:
    if item.get("job_id"):
        return "batch_req_" + item["job_id"].removeprefix("job_")
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{item.get('custom_id')}".encode()).hexdigest()[:32]


def openai_line(batch_id: str, raw: str, endpoint: str = ENDPOINT) -> dict[str, Any]:
    """A result or error line of the batch in OpenAI's shape (its body: ``endpoint``'s answer)."""
    item = orjson.loads(raw)
    job_id = item.get("job_id")
    out: dict[str, Any] = {"id": _line_id(batch_id, item), "custom_id": item.get("custom_id")}
    response = item.get("response")
    if response is not None:
        model, created = item.get("model", ""), int(float(item.get("finished_at") or 0))
        if endpoint == EMBEDDINGS:
            body = embedding_list(model, response["body"], "float")
        elif endpoint == RESPONSES:
            body = _batch_response(job_id, model, created, response["body"])
        else:
            body = completion_object(job_id, model, item.get("finished_at", 0), response["body"])
        out.update(response={"status_code": 200, "request_id": job_id, "body": body}, error=None)
        return out
    error = item.get("error") or {}
    code, message = error.get("code"), error.get("message") or "the request failed"
    if job_id and code not in NEVER_RAN:
        status = failure_status(code, unknown=500)
        body = error_body(status, message, None, code)
        out.update(response={"status_code": status, "request_id": job_id, "body": body}, error=None)
    else:
        out.update(response=None, error={"code": code, "message": message})
    return out


async def output_content(redis, batch_id: str, kind: str) -> AsyncIterator[bytes]:
    """The batch's output (``results``) or error (``errors``) file, as JSONL."""
    key = keys.batch_results(batch_id) if kind == "results" else keys.batch_errors(batch_id)
    endpoint = await redis.hget(keys.batch(batch_id), "endpoint") or ENDPOINT
    async for chunk in batches.line_chunks(redis, key):
        yield b"".join(orjson.dumps(openai_line(batch_id, raw, endpoint)) + b"\n" for raw in chunk)


async def _output_files(redis, record: dict[str, str]) -> tuple[str | None, str | None]:
    """The batch's output and error files, once it is over (registered as the account's files)."""
    if record["status"] not in batches.STATUSES_DONE or record["status"] == "failed":
        return None, None
    batch_id = record["id"]
    ttl = await redis.ttl(keys.batch(batch_id))
    expires = time.time() + (ttl if ttl and ttl > 0 else 86400)
    ended = float(record.get("finalizing_at") or record["created_at"])
    ids: list[str | None] = []
    for file_id, kind, count in zip(output_file_ids(batch_id), ("results", "errors"),
                                    (record.get("completed"), record.get("failed"))):
        if not int(count or 0):
            ids.append(None)
            continue
        await files.register_output(
            redis, record["account_id"], file_id, f"{batch_id}_{'output' if kind == 'results' else 'error'}.jsonl",
            batch_id, kind, ended, expires, functools.partial(output_content, redis, batch_id, kind))
        ids.append(file_id)
    return ids[0], ids[1]


async def batch_object(redis, record: dict[str, str]) -> dict[str, Any]:
    """The batch as OpenAI shows it."""
    output_id, error_id = await _output_files(redis, record)
    errors = orjson.loads(record["errors"]) if record.get("errors") else None
    out: dict[str, Any] = {
        # A batch made on /v4 (or by the CLI) names each line's url: shown as the SGP route.
        "id": record["id"], "object": "batch",
        "endpoint": record.get("endpoint") or (ENDPOINT if record.get("front") == FRONT else SGP_ENDPOINT),
        "errors": {"object": "list", "data": [{"code": e.get("code"), "message": e.get("message"), "param": None,
                                               "line": e.get("line")} for e in errors["data"]]} if errors else None,
        "input_file_id": record.get("input_file_id"), "completion_window": record.get("completion_window"),
        "status": record["status"], "output_file_id": output_id, "error_file_id": error_id,
        "request_counts": {"total": int(record.get("total") or 0), "completed": int(record.get("completed") or 0),
                           "failed": int(record.get("failed") or 0)},
        "metadata": orjson.loads(record["metadata"]) if record.get("metadata") else None,
    }
    for name in batches.TIMESTAMPS:
        out[name] = _ts(record.get(name))
    return out


async def _own(redis, batch_id: str, account: str) -> dict[str, str]:
    record = await batches.get_own(redis, batch_id, account)
    if record is None:
        raise OpenAIError(404, f"no such batch: {batch_id!r}", "batch_id", "batch_not_found")
    return record


@router.post("/batches")
async def create_batch(body: BatchCreate, caller: CurrentCaller, redis: RedisDep, validations: ValidationsDep):
    """The batch, ``validating``: its lines are validated after the answer, as OpenAI does
    (``api/batch_validation.py``), against the models the caller's key may use."""
    account = caller.account_id
    if body.endpoint not in ENDPOINTS:
        raise OpenAIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}", "endpoint")
    if body.completion_window != WINDOW:
        raise OpenAIError(400, f"completion_window must be {WINDOW}", "completion_window")
    try:
        metadata = batches.check_metadata(body.metadata or {})
    except batches.LineError as exc:
        raise OpenAIError(400, str(exc), "metadata") from None
    upload = await files.get_own(redis, body.input_file_id, account)
    if upload is None or upload.get("deleted"):
        raise OpenAIError(404, f"no such file: {body.input_file_id!r}", "input_file_id", "file_not_found")
    if upload.get("purpose") != "batch":
        raise OpenAIError(400, f"file {body.input_file_id!r} has purpose {upload.get('purpose')!r}, not batch",
                          "input_file_id")
    fields = {"front": FRONT, "input_file_id": body.input_file_id, "endpoint": body.endpoint}
    if caller.key_id:
        fields["key_id"] = caller.key_id
    if caller.models is not None:
        fields["key_models"] = orjson.dumps(sorted(caller.models)).decode()
    record = await validations.submit(account, metadata, WINDOW, fields)
    return await batch_object(redis, record)


@router.get("/batches")
async def list_batches(account: CurrentAccount, redis: RedisDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None):
    """The account's batches, newest first; ``after`` is the last id of the previous page."""
    index = keys.account_batches(account)
    max_score = "+inf"
    if after is not None:
        score = await redis.zscore(index, after)
        if score is None:
            raise OpenAIError(400, f"after: no batch {after!r} of yours", "after")
        max_score = f"({score}"
    data: list[dict] = []
    has_more = False
    offset = 0
    while True:
        ids = await redis.zrevrangebyscore(index, max_score, "-inf", start=offset, num=200)
        if not ids:
            break
        offset += len(ids)
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hgetall(keys.batch(batch_id))
            records = await pipe.execute()
        for record in records:
            if record:  # one list of the account's batches, whichever door or the CLI made them
                if len(data) == limit:
                    has_more = True
                    break
                data.append(await batch_object(redis, record))
        if has_more:
            break
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    return await batch_object(redis, await _own(redis, batch_id, account))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, account: CurrentAccount, redis: RedisDep):
    await batches.cancel(redis, await _own(redis, batch_id, account))
    return await batch_object(redis, await redis.hgetall(keys.batch(batch_id)))
