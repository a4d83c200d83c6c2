"""Turning a chat-completion request into a queued job (shared by sync and async routes)."""

from __future__ import annotations

import anyio
from fastapi import HTTPException

from shared import metrics
from shared.catalog import Catalog
from shared.jobs import JobStore
from shared.prompts import RequestError, prepare_job_spec
from shared.provider_config import get_provider_settings
from shared.schemas import ChatCompletionRequest


async def submit(
    body: ChatCompletionRequest, account_id: str, catalog: Catalog, store: JobStore
) -> dict[str, str]:
    if body.account_id is not None and body.account_id != account_id:
        raise HTTPException(403, "this API key cannot act for the account_id in the body")
    spec = catalog.get(body.model)
    if spec is None:
        raise HTTPException(
            400, f"model {body.model!r} is not available; GET /v4/models lists the models you can use"
        )
    missing = get_provider_settings().missing_for(spec)
    if missing:
        raise HTTPException(
            400, f"model {spec.id!r} is served by the {spec.family} provider, which is not configured "
                 f"on this fleet: the operator must set {missing}"
        )
    try:
        if spec.raw_prompt:
            # Rendering an untrusted chat template is bounded but not free: keep it off the loop.
            job_spec = await anyio.to_thread.run_sync(prepare_job_spec, body, spec)
        else:
            job_spec = prepare_job_spec(body, spec)  # no template to render: cheaper than a thread hop
    except RequestError as exc:
        raise HTTPException(400, str(exc)) from None
    record = await store.create(account_id=account_id, model=spec.id, queue=spec.queue, spec=job_spec)
    metrics.JOBS_SUBMITTED.labels(spec.id).inc()
    return record
