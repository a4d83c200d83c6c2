"""Webhook delivery: the events of the outbox (``shared/webhooks.py``) sent to the operators'
endpoints, signed, at least once each, with backoff; and the batches whose end is announced.

Two services:

- ``WebhookFanout``, one worker of the fleet at a time: turns each new outbox entry into one
  delivery per endpoint subscribed to it (a member of ``keys.WEBHOOK_SCHEDULE``, due at once, its
  state in ``keys.WEBHOOK_PENDING``), then moves its cursor past it; and, every second, looks at
  the batches still to be announced (``keys.watched_batches``, written with each batch's record):
  one whose status is final is announced (``batch.<status>``, keyed by batch and status: once),
  then no longer watched. Batches end in their shard's scripts, which know nothing of webhooks:
  the watch is how their end is seen without a script spanning slots.
- ``WebhookDelivery``, in every worker: claims the deliveries that are due
  (``lua/claim_webhooks.lua``: each scored by when its claim lapses, so no other worker takes it
  meanwhile and none is lost with its worker) and POSTs each on a task of its own, at most
  ``CHATFLEET_WEBHOOK_CONCURRENCY`` at once per worker, never on a job's path. A 2xx is delivered;
  anything else (a status, a timeout, a refused connection; a redirect is not followed) is
  attempted again after ``shared.webhooks.backoff``, up to ``CHATFLEET_WEBHOOK_MAX_ATTEMPTS``
  attempts, then given up. Every attempt is listed in the endpoint's deliveries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import orjson

from shared import keys, webhooks
from shared.scripts import Scripts
from shared.settings import Settings
from worker.services.base import Service

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
BATCH_WATCH_SECONDS = 1.0
FANOUT_CHUNK = 200
USER_AGENT = "chatfleet-webhooks/1"


class WebhookFanout(Service):
    name = "webhook fan-out"
    failure = "webhook fan-out pass failed"
    lock = keys.WEBHOOK_FANOUT_LOCK
    lock_ms = 30_000

    def __init__(self, redis: Any, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.watched_at = 0.0  # monotonic time of this process's last look at the watched batches

    def interval(self) -> float:
        return POLL_SECONDS

    def _watch_due(self) -> bool:
        return time.monotonic() - self.watched_at >= BATCH_WATCH_SECONDS

    async def due(self) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip while idle
            pipe.get(keys.WEBHOOK_CURSOR)
            pipe.xrevrange(keys.WEBHOOK_OUTBOX, count=1)
            if self._watch_due():
                for shard in range(keys.SHARDS):
                    pipe.exists(keys.watched_batches(shard))
            cursor, last, *watched = await pipe.execute()
        return bool(last and last[0][0] != cursor) or any(watched)

    async def run_pass(self) -> None:
        if self._watch_due():
            self.watched_at = time.monotonic()
            await self.announce_finished_batches()
        while await self.fan_out():
            pass

    async def fan_out(self) -> int:
        """One chunk of the outbox after the cursor made deliveries; returns how many entries."""
        cursor = await self.redis.get(keys.WEBHOOK_CURSOR) or "0-0"
        found = await self.redis.xread({keys.WEBHOOK_OUTBOX: cursor}, count=FANOUT_CHUNK)
        entries = found[0][1] if found else []
        if not entries:
            return 0
        endpoints = await webhooks.list_endpoints(self.redis)
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, fields in entries:
                body = fields.get("event", "")
                try:
                    event = orjson.loads(body)
                    event_id, type_ = event["id"], event["type"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("webhook outbox entry without an event, skipped")
                    continue
                account_id = fields.get("account") or None
                for endpoint in endpoints:
                    if webhooks.subscribed(endpoint, type_, account_id):
                        member = f"{event_id}|{endpoint['id']}"
                        state = {"body": body, "event_id": event_id, "type": type_, "endpoint": endpoint["id"],
                                 "attempts": 0}
                        # Made again after a lost pass: an existing delivery keeps its attempts.
                        pipe.hsetnx(keys.WEBHOOK_PENDING, member, orjson.dumps(state))
                        pipe.zadd(keys.WEBHOOK_SCHEDULE, {member: now}, nx=True)
            pipe.set(keys.WEBHOOK_CURSOR, entries[-1][0])
            await pipe.execute()
        return len(entries)

    async def announce_finished_batches(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.zrange(keys.watched_batches(shard), 0, -1)
            watched = [batch_id for ids in await pipe.execute() for batch_id in ids]
        if not watched:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in watched:
                pipe.hmget(keys.batch(batch_id), "status", "account_id")
            records = await pipe.execute()
        for batch_id, (status, account_id) in zip(watched, records):
            if status in webhooks.BATCH_FINAL:
                # Raises on a Redis error: the batch stays watched and is announced at a later pass.
                await webhooks.append(self.redis, f"batch.{status}", {"id": batch_id}, account_id=account_id,
                                      key=f"batch:{batch_id}:{status}")
            elif status is not None:
                continue  # still running
            await self.redis.zrem(keys.watched_batches(keys.shard_of(batch_id)), batch_id)


class WebhookDelivery(Service):
    name = "webhook delivery"
    failure = "webhook delivery pass failed"

    def __init__(self, redis: Any, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis, check_slots=settings.check_slots)
        self.in_flight: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None
        # A claim outlasts the longest attempt: no other worker makes it while this one does.
        self.claim_seconds = 2 * settings.webhook_timeout_seconds + 10

    def interval(self) -> float:
        return POLL_SECONDS

    @property
    def free(self) -> int:
        return self.settings.webhook_concurrency - len(self.in_flight)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.webhook_timeout_seconds), follow_redirects=False,
                trust_env=False, headers={"user-agent": USER_AGENT},
                limits=httpx.Limits(max_connections=self.settings.webhook_concurrency, max_keepalive_connections=4))
        return self._http

    async def due(self) -> bool:
        if self.free <= 0:
            return False
        return bool(await self.redis.zrangebyscore(keys.WEBHOOK_SCHEDULE, "-inf", time.time(), start=0, num=1))

    async def run_pass(self) -> None:
        claimed = await self.scripts.claim_webhooks(
            keys=[keys.WEBHOOK_SCHEDULE, keys.WEBHOOK_PENDING],
            args=[repr(time.time()), self.claim_seconds, self.free])
        for member, state in zip(claimed[::2], claimed[1::2]):
            task = asyncio.create_task(self.deliver(member, orjson.loads(state)), name="webhook delivery")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def deliver(self, member: str, state: dict[str, Any]) -> None:
        try:
            await self._deliver(member, state)
        except Exception as exc:  # noqa: BLE001 - its claim lapses and another attempt is made then
            log.warning("webhook delivery to %s failed to complete: %s: %s", state.get("endpoint"),
                        exc.__class__.__name__, exc)

    async def _deliver(self, member: str, state: dict[str, Any]) -> None:
        endpoint_id = state["endpoint"]
        endpoint = await webhooks.get_endpoint(self.redis, endpoint_id)
        attempt = int(state.get("attempts", 0)) + 1
        if endpoint is None or endpoint.get("disabled") == "1":
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.WEBHOOK_SCHEDULE, member)
                pipe.hdel(keys.WEBHOOK_PENDING, member)
                if endpoint is not None:
                    webhooks.record_attempt(pipe, endpoint_id, self._attempt(state, attempt, None,
                                                                             "endpoint disabled", final=True))
                await pipe.execute()
            return
        status, error = await self.post(endpoint, state)
        delivered = status is not None and 200 <= status < 300
        final = delivered or attempt >= self.settings.webhook_max_attempts
        async with self.redis.pipeline(transaction=False) as pipe:
            webhooks.record_attempt(pipe, endpoint_id, self._attempt(state, attempt, status, error, final=final,
                                                                     delivered=delivered))
            if final:
                pipe.zrem(keys.WEBHOOK_SCHEDULE, member)
                pipe.hdel(keys.WEBHOOK_PENDING, member)
            else:
                wait = webhooks.backoff(attempt, self.settings.webhook_backoff_seconds)
                pipe.hset(keys.WEBHOOK_PENDING, member, orjson.dumps({**state, "attempts": attempt}))
                pipe.zadd(keys.WEBHOOK_SCHEDULE, {member: time.time() + wait})
            await pipe.execute()
        if final and not delivered:
            log.warning("webhook %s (%s) to endpoint %s given up after %d attempts: %s", state["event_id"],
                        state["type"], endpoint_id, attempt, error or f"status {status}")

    async def post(self, endpoint: dict[str, str], state: dict[str, Any]) -> tuple[int | None, str | None]:
        """One attempt: the response's status (its body is not read), or why there is none."""
        body = state["body"].encode()
        headers = {"content-type": "application/json",
                   **webhooks.signed_headers(endpoint["secret"], state["event_id"], body)}
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                async with self.http.stream("POST", endpoint["url"], content=body, headers=headers) as response:
                    return response.status_code, None
        except TimeoutError:
            return None, f"no answer within {self.settings.webhook_timeout_seconds:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure to send is an attempt that failed
            # The exception's class and text, never the URL (it may carry a token).
            return None, f"{exc.__class__.__name__}: {exc}"[:300]

    @staticmethod
    def _attempt(state: dict[str, Any], attempt: int, status: int | None, error: str | None, *,
                 final: bool, delivered: bool = False) -> dict[str, Any]:
        return {"event_id": state["event_id"], "type": state["type"], "attempt": attempt, "status_code": status,
                "error": error, "delivered": delivered, "final": final, "at": time.time()}
