"""Batches: many requests submitted at once, each line run as a job like any other.

Lines are validated as they are read (never all held at once); valid ones are staged in Redis
as prepared job specs (``chatfleet:batch:{id}:pending``). A feeder in the workers hands them
to the ``chatfleet.batch`` queue in chunks, keeping at most ``CHATFLEET_BATCH_MAX_IN_FLIGHT``
batch jobs queued or running fleet-wide, so a 50,000-line batch neither floods the broker
nor takes the worker slots interactive requests need. Each finished line appends its result
or error line and bumps the batch's counters in the same script that finishes the job, so
every line is accounted for exactly once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import orjson
from pydantic import ValidationError

from api.jobs import Refused, prepare
from api.request import CompletionRequest
from shared import keys
from shared.catalog import Catalog
from shared.jobspec import StagedLine
from shared.provider_config import ProviderSettings, get_provider_settings
from shared.results import iso
from shared.settings import Settings

MAX_CUSTOM_ID = 512
MAX_REPORTED_ERRORS = 1000
MAX_METADATA_KEYS = 16
STATUSES_DONE = frozenset({"completed", "failed", "expired", "cancelled"})
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at", "expires_at")


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


class LineError(ValueError):
    pass


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where}: {err['msg']}" if where else err["msg"]


@dataclass(frozen=True, slots=True)
class LineFormat:
    """One door's batch lines: the ``url`` a line names, and how its ``body`` becomes a
    door-neutral request (raising pydantic's ValidationError or LineError)."""

    url: str
    parse: Callable[[dict[str, Any]], CompletionRequest]


LineFormats = Mapping[str, LineFormat]  # by url


def parse_line(raw: bytes | str, seen: set[str], account_id: str, catalog: Catalog, providers: ProviderSettings,
               formats: LineFormats, reservation: int) -> StagedLine:
    """The staged entry of one valid line; raises LineError saying what is wrong with it. A line's
    ``url`` says which door's wire format its body is in (one of ``formats``)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError("each line must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("custom_id is required (a non-empty string)")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise LineError(f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    if custom_id in seen:
        raise LineError(f"custom_id {custom_id!r} is used by an earlier line; it must be unique in the batch")
    seen.add(custom_id)
    if line.get("method", "POST") != "POST":
        raise LineError("method must be POST")
    url = line.get("url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise LineError("body must be a JSON object")
    line_format = formats.get(url) if isinstance(url, str) else None
    if line_format is None:
        raise LineError(f"url must be {' or '.join(formats)}")
    if body.get("stream"):
        raise LineError("batch lines cannot stream: remove \"stream\"")
    try:
        request = line_format.parse(body)
    except ValidationError as exc:
        raise LineError(_first_error(exc)) from None
    except (ValueError, RecursionError) as exc:  # a rule a wire model checks after its fields
        raise LineError(str(exc) or type(exc).__name__) from None
    try:
        prepared = prepare(request, account_id, catalog, providers, reservation)
        spec = prepared.spec.dump()
    except Refused as exc:
        raise LineError(str(exc)) from None
    except (ValueError, msgspec.EncodeError) as exc:  # text no JSON can carry (a lone surrogate)
        raise LineError(f"the line's body cannot be read: {exc}") from None
    queue = keys.QUEUE_LOCAL if prepared.model.queue == keys.QUEUE_LOCAL else keys.QUEUE_BATCH
    return StagedLine(custom_id, prepared.model.id, queue, msgspec.Raw(spec))


def validate_lines(lines: Iterator[bytes], account_id: str, catalog: Catalog, providers: ProviderSettings,
                   formats: LineFormats, reservation: int,
                   chunk: int = 500) -> Iterator[tuple[list[bytes], list[dict[str, Any]]]]:
    """Chunks of (staged entries as JSON, errors): bounded memory whatever the batch size."""
    seen: set[str] = set()
    entries: list[bytes] = []
    errors: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            errors.append({"line": number, "code": "invalid_line", "message": "empty line"})
        else:
            try:
                entries.append(parse_line(raw, seen, account_id, catalog, providers, formats, reservation).dump())
            except LineError as exc:
                errors.append({"line": number, "code": "invalid_line", "message": str(exc)})
        if len(entries) >= chunk or len(errors) >= chunk:
            yield entries, errors
            entries, errors = [], []
    yield entries, errors


def parse_window(value: str) -> int:
    """'24h', '90m', '3600s' or '3600' -> seconds."""
    text = value.strip().lower()
    units = {"h": 3600, "m": 60, "s": 1}
    try:
        if text[-1:] in units:
            seconds = int(float(text[:-1]) * units[text[-1]])
        else:
            seconds = int(text)
    except ValueError:
        raise LineError(f"completion_window {value!r} is not a duration like 24h") from None
    if not 1 <= seconds <= 7 * 86400:
        raise LineError("completion_window must be between 1s and 7 days")
    return seconds


def view(record: dict[str, str]) -> dict[str, Any]:
    """The batch as the API shows it."""
    out: dict[str, Any] = {
        "id": record["id"],
        "object": "batch",
        "status": record["status"],
        "completion_window": record.get("completion_window"),
        "request_counts": {"total": int(record.get("total") or 0),
                           "completed": int(record.get("completed") or 0),
                           "failed": int(record.get("failed") or 0)},
        "metadata": orjson.loads(record["metadata"]) if record.get("metadata") else {},
        "errors": orjson.loads(record["errors"]) if record.get("errors") else None,
        "results_url": f"/v4/batches/{record['id']}/results",
        "errors_url": f"/v4/batches/{record['id']}/errors",
    }
    for name in TIMESTAMPS:
        out[name] = iso(record.get(name))
    return out


def check_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict):
        raise LineError("metadata must be a JSON object of strings")
    if len(metadata) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()):
        raise LineError(f"metadata: at most {MAX_METADATA_KEYS} string keys (64 chars) "
                        "with string values (512 chars)")
    return metadata


async def stage(redis, target: str, account: str, lines: Iterator[bytes], catalog: Catalog,
                formats: LineFormats, settings: Settings) -> tuple[int, list, int]:
    """Validate every line and stage the valid ones on ``target``; returns (lines, reported
    errors, error count), with an empty batch reported as such. Runs the CPU work on a thread, a
    chunk at a time, and writes each chunk from the loop."""
    chunks = validate_lines(lines, account, catalog, get_provider_settings(), formats,
                            settings.default_completion_reservation)
    errors: list[dict[str, Any]] = []
    total, error_count = 0, 0

    def next_chunk():
        return next(chunks, None)

    while (chunk := await anyio.to_thread.run_sync(next_chunk)) is not None:
        entries, chunk_errors = chunk
        total += len(entries) + len(chunk_errors)
        error_count += len(chunk_errors)
        errors.extend(chunk_errors[: max(MAX_REPORTED_ERRORS - len(errors), 0)])
        if entries and not error_count:  # once a line is bad nothing will run: stop staging
            await redis.rpush(target, *entries)
    if total == 0:
        errors, error_count = [{"line": 0, "code": "empty_batch", "message": "the batch has no lines"}], 1
    return total, errors, error_count


def retention_seconds(settings: Settings, window_seconds: int) -> int:
    """How long a batch and its lines are kept: its window and a day, at least the jobs' retention."""
    return max(settings.job_retention_seconds, window_seconds + 86400)


def errors_field(errors: list[dict[str, Any]], error_count: int) -> str:
    return orjson.dumps({"object": "list", "data": errors, "total": error_count}).decode()


async def begin(redis, account: str, metadata: dict[str, str], window: str,
                fields: dict[str, str] | None = None, batch_id: str | None = None,
                now: float | None = None) -> tuple[str, float]:
    """A new batch's record, ``validating``, in its account's list; returns (its id, its time)."""
    batch_id = batch_id or new_batch_id()
    now = now or time.time()
    await redis.hset(keys.batch(batch_id), mapping={
        "id": batch_id, "account_id": account, "status": "validating", "created_at": repr(now),
        "completion_window": window, "metadata": orjson.dumps(metadata).decode(),
        "total": 0, "completed": 0, "failed": 0, **(fields or {}),
    })
    await redis.zadd(keys.account_batches(account), {batch_id: now})
    # Watched until its end is announced (webhooks: worker/services/webhooks.py).
    await redis.zadd(keys.watched_batches(keys.shard_of(batch_id)), {batch_id: now})
    return batch_id, now


async def create(redis, account: str, lines: Iterator[bytes], metadata: dict[str, str], window: str,
                 catalog: Catalog, settings: Settings, formats: LineFormats,
                 fields: dict[str, str] | None = None) -> str:
    """Validate and stage a batch; it is ``in_progress`` (the workers' feeder hands its lines to
    the queue) or, if any line is bad, ``failed`` with every bad line reported and nothing run.
    ``fields`` go in the batch's record as they are (the OpenAI front door's input file, say).
    Returns the batch's id; raises LineError for a bad completion window."""
    window_seconds = parse_window(window)
    batch_id, now = await begin(redis, account, metadata, window, fields)
    total, errors, error_count = await stage(redis, keys.batch_pending(batch_id), account, lines, catalog, formats,
                                             settings)
    retention = retention_seconds(settings, window_seconds)
    if error_count:
        # Refused whole: nothing runs; every bad line is reported with its number.
        await redis.delete(keys.batch_pending(batch_id))
        await redis.hset(keys.batch(batch_id), mapping={
            # Nothing ran: every line counts as failed, so that the counts add up.
            "status": "failed", "failed_at": repr(time.time()), "total": total, "failed": total,
            "errors": errors_field(errors, error_count),
        })
    else:
        started = time.time()
        await redis.hset(keys.batch(batch_id), mapping={
            "status": "in_progress", "in_progress_at": repr(started), "total": total,
            "expires_at": repr(now + window_seconds),
        })
        await redis.zadd(keys.active_batches(keys.shard_of(batch_id)), {batch_id: now})
    for key in (keys.batch(batch_id), keys.batch_pending(batch_id), keys.batch_results(batch_id),
                keys.batch_errors(batch_id)):
        await redis.expire(key, retention)
    return batch_id


async def get_own(redis, batch_id: str, account: str) -> dict[str, str] | None:
    """The batch's record if it belongs to ``account``; None otherwise, exactly as if missing."""
    record = await redis.hgetall(keys.batch(batch_id))
    if not record or record.get("account_id") != account:
        return None
    return record


class UnknownCursor(LookupError):
    """``after`` names no batch of the account."""


async def page(redis, account: str, limit: int, after: str | None) -> dict[str, Any]:
    """The account's batches, newest first; ``after`` is the last id of the previous page."""
    max_score = "+inf"
    if after is not None:
        score = await redis.zscore(keys.account_batches(account), after)
        if score is None:
            raise UnknownCursor(after)
        max_score = f"({score}"
    ids = await redis.zrevrangebyscore(keys.account_batches(account), max_score, "-inf", start=0, num=limit + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in ids[:limit]:
            pipe.hgetall(keys.batch(batch_id))
        records = await pipe.execute()
    data = [view(r) for r in records if r]
    return {"object": "list", "data": data, "has_more": len(ids) > limit,
            "last_id": data[-1]["id"] if data else None}


async def cancel(redis, record: dict[str, str]) -> dict[str, Any]:
    """Ask for the batch to end: the workers' feeder cancels what has not run (``ending``)."""
    batch_id = record["id"]
    if record["status"] in ("in_progress", "validating") and not record.get("ending"):
        await redis.hset(keys.batch(batch_id), mapping={
            "status": "cancelling", "ending": "cancelled", "cancelling_at": repr(time.time())})
    return view(await redis.hgetall(keys.batch(batch_id)))


async def line_chunks(redis, key: str) -> AsyncIterator[list[str]]:
    """A results or errors list, a thousand lines at a time."""
    start = 0
    while True:
        chunk = await redis.lrange(key, start, start + 999)
        if not chunk:
            return
        yield chunk
        start += len(chunk)


async def jsonl(redis, key: str) -> AsyncIterator[bytes]:
    """A results or errors list as JSONL."""
    async for chunk in line_chunks(redis, key):
        yield ("\n".join(chunk) + "\n").encode()
