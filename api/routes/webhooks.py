"""``/v4/admin/webhooks``: the endpoints webhooks are delivered to (admin key required), and their
recent deliveries. The events and their signing are ``shared/webhooks.py``'s; the delivery is the
workers' (``worker/services/webhooks.py``)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from api import accounts
from api.deps import AdminAuth, RedisDep
from shared import webhooks
from shared.results import iso

router = APIRouter(prefix="/v4/admin/webhooks", dependencies=[AdminAuth])

EventNames = list[str] | None


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="where events are POSTed: an http:// or https:// URL")
    events: EventNames = Field(default=None, max_length=len(webhooks.EVENT_TYPES) * 2,
                               description=f"event types to send (default: all): {', '.join(webhooks.EVENT_TYPES)}")
    account_id: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="only this account's events (default: every account's and the fleet's)")
    description: str | None = Field(default=None, max_length=1000)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    events: EventNames = Field(default=None, max_length=len(webhooks.EVENT_TYPES) * 2)
    description: str | None = Field(default=None, max_length=1000)
    disabled: bool | None = None


def _checked(check, value):
    try:
        return check(value)
    except webhooks.Invalid as exc:
        raise HTTPException(400, str(exc)) from None


async def _endpoint_or_404(redis, endpoint_id: str) -> dict[str, str]:
    record = await webhooks.get_endpoint(redis, endpoint_id)
    if record is None:
        raise HTTPException(404, f"webhook endpoint {endpoint_id!r} not found")
    return record


@router.post("", status_code=201)
async def create_endpoint(body: EndpointCreate, redis: RedisDep):
    url = _checked(webhooks.check_url, body.url)
    events = _checked(webhooks.check_events, body.events)
    if body.account_id is not None and await accounts.get_account(redis, body.account_id) is None:
        raise HTTPException(400, f"account_id: no account {body.account_id!r}")
    record = await webhooks.create_endpoint(redis, url, events, body.account_id, body.description)
    return {**webhooks.endpoint_view(record, with_secret=True),
            "note": "the secret is shown once: verify each delivery's webhook-signature with it"}


@router.get("")
async def list_endpoints(redis: RedisDep):
    return {"object": "list", "data": [webhooks.endpoint_view(r) for r in await webhooks.list_endpoints(redis)]}


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, redis: RedisDep):
    return webhooks.endpoint_view(await _endpoint_or_404(redis, endpoint_id))


@router.patch("/{endpoint_id}")
async def update_endpoint(endpoint_id: str, body: EndpointUpdate, redis: RedisDep):
    await _endpoint_or_404(redis, endpoint_id)
    changes: dict[str, str] = {}
    if body.url is not None:
        changes["url"] = _checked(webhooks.check_url, body.url)
    if "events" in body.model_fields_set:
        changes["events"] = orjson.dumps(_checked(webhooks.check_events, body.events)).decode()
    if "description" in body.model_fields_set:
        changes["description"] = body.description or ""
    if body.disabled is not None:
        changes["disabled"] = "1" if body.disabled else "0"
    if changes:
        await webhooks.update_endpoint(redis, endpoint_id, changes)
    return webhooks.endpoint_view(await _endpoint_or_404(redis, endpoint_id))


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, redis: RedisDep):
    if not await webhooks.delete_endpoint(redis, endpoint_id):
        raise HTTPException(404, f"webhook endpoint {endpoint_id!r} not found")
    return Response(status_code=204)


@router.get("/{endpoint_id}/deliveries")
async def list_deliveries(endpoint_id: str, redis: RedisDep):
    """The endpoint's latest delivery attempts, newest first: each event's id and type, the
    attempt's number, the status it answered (or why there is none), whether it was delivered,
    whether it was the last one (delivered, or given up), and when."""
    await _endpoint_or_404(redis, endpoint_id)
    attempts = await webhooks.recent_deliveries(redis, endpoint_id)
    return {"object": "list", "data": [{**a, "at": iso(a.get("at"))} for a in attempts]}
