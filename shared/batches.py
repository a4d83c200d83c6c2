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
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import ValidationError

from shared import keys
from shared.catalog import Catalog
from shared.jobs import iso
from shared.prompts import RequestError, prepare_job_spec
from shared.provider_config import ProviderSettings
from shared.schemas import ChatCompletionRequest

MAX_CUSTOM_ID = 512
MAX_REPORTED_ERRORS = 1000
STATUSES_DONE = frozenset({"completed", "failed", "expired", "cancelled"})
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at", "expires_at")


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


class LineError(ValueError):
    pass


def translate_openai_body(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body as an SGP v4 one (``/v1/chat/completions`` lines)."""
    if body.get("stream"):
        raise LineError("batch lines cannot stream: remove \"stream\"")
    if body.get("n", 1) != 1:
        raise LineError("n must be 1")
    unknown = set(body) - {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                           "top_p", "stop", "frequency_penalty", "presence_penalty", "stream", "n", "seed", "user"}
    if unknown:
        raise LineError(f"unsupported OpenAI field(s): {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                         ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty")):
        if body.get(theirs) is not None:
            params[ours] = body[theirs]
    if body.get("stop") is not None:
        params["stop_sequences"] = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
    out = {"model": body.get("model"), "messages": body.get("messages")}
    if params:
        out["model_parameters"] = params
    return out


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where}: {err['msg']}" if where else err["msg"]


def parse_line(raw: bytes | str, seen: set[str], account_id: str, catalog: Catalog,
               providers: ProviderSettings) -> dict[str, Any]:
    """A staged entry for one valid line; raises LineError saying what is wrong with it."""
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
    if url == "/v1/chat/completions":
        body = translate_openai_body(body)
    elif url != "/v4/chat-completions":
        raise LineError("url must be /v4/chat-completions or /v1/chat/completions")
    elif body.get("stream"):
        raise LineError("batch lines cannot stream: remove \"stream\"")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise LineError(_first_error(exc)) from None
    if request.account_id is not None and request.account_id != account_id:
        raise LineError("account_id names another account than the API key's")
    spec = catalog.get(request.model)
    if spec is None:
        raise LineError(f"model {request.model!r} is not available")
    missing = providers.missing_for(spec)
    if missing:
        raise LineError(f"model {spec.id!r} needs its provider configured ({missing})")
    try:
        job_spec = prepare_job_spec(request, spec)
    except RequestError as exc:
        raise LineError(str(exc)) from None
    queue = keys.QUEUE_LOCAL if spec.queue == keys.QUEUE_LOCAL else keys.QUEUE_BATCH
    return {"custom_id": custom_id, "model": spec.id, "queue": queue, "spec": job_spec}


def validate_lines(lines: Iterator[bytes], account_id: str, catalog: Catalog, providers: ProviderSettings,
                   chunk: int = 500) -> Iterator[tuple[list[bytes], list[dict]]]:
    """Chunks of (staged entries as JSON, errors): bounded memory whatever the batch size."""
    seen: set[str] = set()
    entries: list[bytes] = []
    errors: list[dict] = []
    number = 0
    for raw in lines:
        number += 1
        if not raw.strip():
            errors.append({"line": number, "code": "invalid_line", "message": "empty line"})
        else:
            try:
                entries.append(orjson.dumps(parse_line(raw, seen, account_id, catalog, providers)))
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


def now_repr() -> str:
    return repr(time.time())
