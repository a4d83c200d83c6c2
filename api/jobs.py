"""Jobs as the API makes and shows them: a chat-completion request turned into a queued job
(for the synchronous and the asynchronous routes alike), and the job as ``GET /v4/jobs/{id}``
shows it."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from fastapi import HTTPException

from api import metrics
from api.prompts import RequestError, prepare_job_spec
from shared.catalog import Catalog
from shared.jobs import JobStore
from shared.provider_config import get_provider_settings
from shared.schemas import ChatCompletionRequest, iso


class Refused(HTTPException):
    """A request refused before any job exists: ``param`` names the field at fault, ``code``
    the kind of fault (the OpenAI front door shows both; the SGP one, only the message)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param = param
        self.code = code


async def submit(
    body: ChatCompletionRequest, account_id: str, catalog: Catalog, store: JobStore
) -> dict[str, str]:
    if body.account_id is not None and body.account_id != account_id:
        raise Refused(403, "this API key cannot act for the account_id in the body", "account_id")
    spec = catalog.get(body.model)
    if spec is None:
        raise Refused(400, f"model {body.model!r} is not available; GET /v4/models lists the models you can use",
                      "model", "model_not_found")
    missing = get_provider_settings().missing_for(spec)
    if missing:
        raise Refused(400, f"model {spec.id!r} is served by the {spec.family} provider, which is not configured "
                           f"on this fleet: the operator must set {missing}", "model", "model_not_available")
    try:
        if spec.raw_prompt:
            # Rendering an untrusted chat template is bounded but not free: keep it off the loop.
            job_spec = await anyio.to_thread.run_sync(prepare_job_spec, body, spec)
        else:
            job_spec = prepare_job_spec(body, spec)  # no template to render: cheaper than a thread hop
    except RequestError as exc:
        raise Refused(400, str(exc), exc.param, exc.code) from None
    record = await store.create(account_id=account_id, model=spec.id, queue=spec.queue, spec=job_spec)
    metrics.JOBS_SUBMITTED.labels(spec.id).inc()
    return record


def _loads(value: str | None) -> Any:
    return None if value in (None, "") else orjson.loads(value)


def public_view(record: dict[str, str]) -> dict[str, Any]:
    """The job as ``GET /v4/jobs/{id}`` shows it."""
    throttled = record.get("status") == "throttled"
    return {
        "id": record["id"],
        "object": "job",
        "status": record["status"],
        "model": record.get("model"),
        "account_id": record.get("account_id"),
        "created_at": iso(record.get("created_at")),
        "updated_at": iso(record.get("updated_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
        "attempts": int(record.get("attempts") or 0),
        "next_try_at": iso(record.get("next_try_at")) if throttled else None,
        "throttle_reason": record.get("throttle_reason") if throttled else None,
        "result": _loads(record.get("result")),
        "usage": _loads(record.get("usage")),
        "error": _loads(record.get("error")),
        # model@deployment that answered (another deployment, or a fallback model, after a fault)
        "served_by": record.get("served_by") or None,
        "stream_url": f"/v4/jobs/{record['id']}/stream",
    }
