"""Webhooks: what the fleet announces to an operator's own endpoints, and how it is signed.

An event is emitted by appending it to a durable outbox in Redis (``emit``: one script, never an
error for its caller); the workers' webhook services (``worker/services/webhooks.py``) fan each
one out to the endpoints subscribed to it and deliver it, at least once, retrying with backoff.

Events have OpenAI's webhook shape::

    {"object": "event", "id": "evt_<hex>", "type": "batch.completed", "created_at": <unix s>,
     "data": {"id": "batch_..."}}

- ``batch.completed``, ``batch.failed``, ``batch.cancelled``, ``batch.expired``: ``data`` is
  ``{"id": <batch id>}``, as OpenAI sends them.
- ``budget.threshold``: a budget crossed 80 % or 100 %; ``data`` is ``{"scope": "account" | "key",
  "account_id", "key_id" (None for the account's), "period": "day" | "month" | "total",
  "period_id" ("2026-12-08", "2026-12", "total"), "threshold": 0.8 | 1.0, "budget_usd",
  "spent_usd"}``.
- ``deployment.cooldown``: a provider deployment started to cool down; ``data`` is
  ``{"deployment", "models" (the catalog's models it serves), "until" (unix s), "reason"}``.

Deliveries are signed as Standard Webhooks (standardwebhooks.com) have it: ``webhook-id`` (the
event id, the same on every attempt: receivers dedupe by it), ``webhook-timestamp`` (unix s of
the attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
keyed with the endpoint's secret (``whsec_`` + base64 of 32 random bytes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from shared import keys
from shared.results import iso
from shared.scripts import Scripts

log = logging.getLogger(__name__)

BATCH_FINAL = ("completed", "failed", "cancelled", "expired")
BATCH_EVENTS = tuple(f"batch.{status}" for status in BATCH_FINAL)
EVENT_TYPES = ("budget.threshold", *BATCH_EVENTS, "deployment.cooldown")

OUTBOX_MAX = 100_000  # events kept in the outbox (about: trimmed with MAXLEN ~)
EMITTED_TTL_SECONDS = 7 * 86400  # how long an idempotency key keeps a second emit out
EMIT_TIMEOUT_SECONDS = 2.0  # an emit gives up (logged) past this: it never holds its caller up longer
DELIVERIES_KEPT = 100  # attempts listed per endpoint
DELIVERIES_TTL_SECONDS = 30 * 86400
MAX_URL = 2048
SECRET_BYTES = 32

# The backoff before attempt n + 1, in units of CHATFLEET_WEBHOOK_BACKOFF_SECONDS (5 s: 5 s, 30 s,
# 2 min, 10 min, 30 min, 1 h, 2 h), the last repeated.
BACKOFF_STEPS = (1, 6, 24, 120, 360, 720, 1440)
JITTER = 0.2  # each wait is drawn within ±20 % of its step


def new_event_id() -> str:
    return f"evt_{secrets.token_hex(12)}"


def new_endpoint_id() -> str:
    return f"wh_{secrets.token_hex(12)}"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key a ``whsec_`` secret stands for (the base64 after the prefix)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``'s value: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    digest = hmac.new(secret_bytes(secret), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": event_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, event_id, ts, body)}


def backoff(attempts: int, base: float, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``attempts`` failed attempts before the next: ``base`` times the
    step of ``BACKOFF_STEPS`` (the last one repeated), within ±``JITTER``."""
    step = BACKOFF_STEPS[min(max(attempts, 1), len(BACKOFF_STEPS)) - 1]
    return base * step * (1 - JITTER + 2 * JITTER * draw())


def event_body(type: str, data: Mapping[str, Any], event_id: str | None = None,
               created_at: int | None = None) -> dict[str, Any]:
    return {"object": "event", "id": event_id or new_event_id(), "type": type,
            "created_at": int(time.time()) if created_at is None else created_at, "data": dict(data)}


# --- emitting -----------------------------------------------------------------------------------


async def append(redis: Any, type: str, data: Mapping[str, Any], *, account_id: str | None = None,
                 key: str | None = None) -> str | None:
    """``emit``, raising what Redis raises: the event's id, or None if ``key`` was emitted already."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {type!r}")
    event = event_body(type, data)
    flag = keys.webhook_emitted(key) if key else keys.WEBHOOK_OUTBOX
    entry = await Scripts(redis).emit_webhook(
        keys=[keys.WEBHOOK_OUTBOX, flag],
        args=[orjson.dumps(event), account_id or "", OUTBOX_MAX, EMITTED_TTL_SECONDS, event["id"], "1" if key else "0"])
    return str(event["id"]) if entry else None


async def emit(redis: Any, type: str, data: Mapping[str, Any], *, account_id: str | None = None,
               key: str | None = None) -> str | None:
    """Announce an event (``type``, one of ``EVENT_TYPES``; ``data`` in the shape this module's
    docstring gives) to the endpoints subscribed to it: appended to the outbox, which the workers
    deliver from. ``account_id``: the account it is about (endpoints bound to another account do
    not get it). ``key``: an idempotency key: the same key emitted again (within 7 days) appends
    nothing, so that a caller that may run twice emits once. E.g.::

        await emit(redis, "budget.threshold", {"scope": "account", "account_id": "acme", "key_id": None,
                   "period": "month", "period_id": "2026-12", "threshold": 0.8, "budget_usd": 100.0,
                   "spent_usd": 80.4}, account_id="acme", key="budget:acme::2026-12:0.8")

    Never raises (a Redis error, a timeout, an unknown type are logged) and waits at most a
    couple of seconds: emitting never fails nor holds up a job. Returns the event's id, or None
    when nothing was appended."""
    try:
        return await asyncio.wait_for(append(redis, type, data, account_id=account_id, key=key),
                                      EMIT_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - an announcement never fails what it announces
        log.warning("webhook event %s not emitted: %s: %s", type, exc.__class__.__name__, exc)
        return None


async def emit_cooldown(redis: Any, deployment: str, models: Iterable[str], cooldown_seconds: float,
                        window_seconds: float) -> str | None:
    """``deployment.cooldown``, for a cooldown that has just started (``lua/deployment_health.lua``
    said so): its reason is what the cooldown flag records. Never raises."""
    now = time.time()
    try:
        counted = await asyncio.wait_for(redis.get(keys.deployment_cooldown(deployment)), EMIT_TIMEOUT_SECONDS)
    except Exception:  # noqa: BLE001 - the reason is a detail; the event goes out without it
        counted = None
    reason = f"{counted} in the current {window_seconds:g} s window" if counted else "failing calls"
    data = {"deployment": deployment, "models": sorted(set(models)), "until": int(now + cooldown_seconds),
            "reason": reason}
    return await emit(redis, "deployment.cooldown", data, key=f"cooldown:{deployment}:{int(now)}")


# --- endpoints ------------------------------------------------------------------------------------


class Invalid(ValueError):
    """A field of an endpoint refused; the message names it."""


def check_url(url: str) -> str:
    url = url.strip()
    if len(url) > MAX_URL:
        raise Invalid(f"url: at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise Invalid("url: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url: must be an http:// or https:// URL with a host")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise Invalid("url: must not contain whitespace or control characters")
    return url


def check_events(events: Iterable[str] | None) -> list[str]:
    """The event types an endpoint subscribes to (all when None), each known, each once."""
    if events is None:
        return list(EVENT_TYPES)
    chosen: list[str] = []
    for name in events:
        if name not in EVENT_TYPES:
            raise Invalid(f"events: unknown event type {name[:100]!r}; the types are {', '.join(EVENT_TYPES)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise Invalid("events: name at least one event type, or leave it out for all of them")
    return chosen


def endpoint_view(record: Mapping[str, str], with_secret: bool = False) -> dict[str, Any]:
    """An endpoint as the admin API shows it (its secret only when it is made)."""
    out: dict[str, Any] = {
        "id": record["id"], "object": "webhook_endpoint", "url": record["url"],
        "events": orjson.loads(record.get("events") or "[]"), "account_id": record.get("account_id") or None,
        "description": record.get("description") or None, "disabled": record.get("disabled") == "1",
        "created_at": iso(record.get("created_at")), "updated_at": iso(record.get("updated_at")),
    }
    if with_secret:
        out["secret"] = record["secret"]
    return out


def subscribed(record: Mapping[str, str], type: str, account_id: str | None) -> bool:
    """Whether the endpoint gets this event: enabled, subscribed to its type, and, where it is
    bound to an account, the event that account's (an event of no account goes only to unbound
    endpoints)."""
    if record.get("disabled") == "1" or type not in orjson.loads(record.get("events") or "[]"):
        return False
    bound = record.get("account_id") or None
    return bound is None or bound == account_id


async def create_endpoint(redis: Any, url: str, events: list[str], account_id: str | None,
                          description: str | None) -> dict[str, str]:
    """A new endpoint (its record, secret included); the fields already checked."""
    endpoint_id = new_endpoint_id()
    now = repr(time.time())
    record = {"id": endpoint_id, "url": url, "events": orjson.dumps(events).decode(), "account_id": account_id or "",
              "description": description or "", "secret": new_secret(), "disabled": "0", "created_at": now,
              "updated_at": now}
    await redis.hset(keys.webhook_endpoint(endpoint_id), mapping=record)
    await redis.zadd(keys.WEBHOOK_ENDPOINTS, {endpoint_id: float(now)})
    return record


async def get_endpoint(redis: Any, endpoint_id: str) -> dict[str, str] | None:
    record: dict[str, str] = await redis.hgetall(keys.webhook_endpoint(endpoint_id))
    return record if record.get("id") else None


async def list_endpoints(redis: Any) -> list[dict[str, str]]:
    """Every endpoint's record, oldest first."""
    ids = await redis.zrange(keys.WEBHOOK_ENDPOINTS, 0, -1)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for endpoint_id in ids:
            pipe.hgetall(keys.webhook_endpoint(endpoint_id))
        records = await pipe.execute()
    return [r for r in records if r.get("id")]


async def update_endpoint(redis: Any, endpoint_id: str, changes: Mapping[str, str]) -> None:
    await redis.hset(keys.webhook_endpoint(endpoint_id), mapping={**changes, "updated_at": repr(time.time())})


async def delete_endpoint(redis: Any, endpoint_id: str) -> bool:
    """Gone at once: its deliveries still scheduled are dropped when they come due."""
    removed = await redis.zrem(keys.WEBHOOK_ENDPOINTS, endpoint_id)
    await redis.delete(keys.webhook_endpoint(endpoint_id), keys.webhook_deliveries(endpoint_id))
    return bool(removed)


async def recent_deliveries(redis: Any, endpoint_id: str, limit: int = DELIVERIES_KEPT) -> list[dict[str, Any]]:
    """The endpoint's latest delivery attempts, newest first."""
    return [orjson.loads(raw) for raw in await redis.lrange(keys.webhook_deliveries(endpoint_id), 0, limit - 1)]


def record_attempt(pipe: Any, endpoint_id: str, attempt: Mapping[str, Any]) -> None:
    """Queue on ``pipe`` one attempt in the endpoint's list (the latest ``DELIVERIES_KEPT``)."""
    key = keys.webhook_deliveries(endpoint_id)
    pipe.lpush(key, orjson.dumps(dict(attempt)))
    pipe.ltrim(key, 0, DELIVERIES_KEPT - 1)
    pipe.expire(key, DELIVERIES_TTL_SECONDS)
