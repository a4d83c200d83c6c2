"""Jobs as the API makes and shows them: the one path from a door-neutral request to a queued
job (``prepare``, then ``submit``), for interactive requests and batch lines alike, and the job as
``GET /v4/jobs/{id}`` shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from fastapi import HTTPException

from api import metrics
from api.accounts import Caller
from api.prompts import RequestError, job_spec
from api.request import CompletionRequest
from shared.catalog import Catalog, ModelSpec
from shared.jobs import JobStore
from shared.jobspec import JobSpec
from shared.provider_config import ProviderSettings, get_provider_settings
from shared.results import iso


class Refused(HTTPException):
    """A request refused before any job exists: ``param`` names the field at fault, ``code``
    the kind of fault (the OpenAI door shows both; the SGP one, only the message)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(status, message)
        self.param = param
        self.code = code

    def __str__(self) -> str:
        return str(self.detail)


# Where an unknown model's refusal sends the client: this door's list (the OpenAI door names its own).
MODELS_LIST = "GET /v4/models"


@dataclass(frozen=True, slots=True)
class Prepared:
    model: ModelSpec
    spec: JobSpec


def prepare(request: CompletionRequest, account_id: str, catalog: Catalog, providers: ProviderSettings,
            reservation: int) -> Prepared:
    """The request checked (the account it names, its model, the model's provider, everything
    ``api/prompts.py`` checks) and made a job spec; raises Refused. Renders an untrusted chat
    template for the raw-prompt families: bounded, but not for the event loop (``submit``)."""
    if request.account_id is not None and request.account_id != account_id:
        raise Refused(403, "this API key cannot act for the account_id in the body", "account_id")
    model = catalog.get(request.model)
    if model is None:
        raise Refused(400, f"model {request.model!r} is not available; {MODELS_LIST} lists the models you can use",
                      "model", "model_not_found")
    missing = providers.missing_for(model)
    if missing:
        raise Refused(400, f"model {model.id!r} is served by the {model.family} provider, which is not configured "
                           f"on this fleet: the operator must set {missing}", "model", "model_not_available")
    try:
        return Prepared(model, job_spec(request, model, reservation))
    except RequestError as exc:
        raise Refused(400, str(exc), exc.param, exc.code) from None


async def submit(request: CompletionRequest, account_id: str, catalog: Catalog, store: JobStore,
                 caller: Caller | None = None) -> dict[str, str]:
    """``prepare``, then the job recorded and queued; returns its record. ``caller``: the API
    key it was submitted with (its own limits and budget apply with the account's, and its
    models bound its fallbacks)."""
    args = (request, account_id, catalog, get_provider_settings(), store.settings.default_completion_reservation)
    model = catalog.get(request.model)
    if model is not None and model.raw_prompt:
        # Rendering an untrusted chat template is bounded but not free: keep it off the loop.
        prepared = await anyio.to_thread.run_sync(prepare, *args)
    else:
        prepared = prepare(*args)  # no template to render: cheaper than a thread hop
    record = await store.create(account_id=account_id, model=prepared.model.id, queue=prepared.model.queue,
                                spec=prepared.spec, key_id=caller.key_id if caller else "",
                                key_models=caller.models if caller else None, priority=request.priority)
    metrics.JOBS_SUBMITTED.labels(prepared.model.id).inc()
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
        # Its place among its account's own work (a batch's lines are low).
        "priority": record.get("priority") or ("low" if record.get("batch_id") else "default"),
        "next_try_at": iso(record.get("next_try_at")) if throttled else None,
        "throttle_reason": record.get("throttle_reason") if throttled else None,
        "result": _loads(record.get("result")),
        "usage": _loads(record.get("usage")),
        "error": _loads(record.get("error")),
        # model@deployment that answered (another deployment, or a fallback model, after a fault)
        "served_by": record.get("served_by") or None,
        "stream_url": f"/v4/jobs/{record['id']}/stream",
    }
