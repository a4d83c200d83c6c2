"""Job records in Redis and every state transition of a job, each one atomic.

A job is a hash ``chatfleet:job:{id}`` plus its event stream. Jobs may run more than once
(the broker redelivers, a dead worker's lease lapses); a lease fences each attempt so that
only the attempt that owns the job can publish events or finish it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from redis.exceptions import ResponseError

from shared import keys
from shared.events import Event, stream_event
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts
from shared.settings import Settings
from shared.taskmessage import run_job_message
from shared.usage import UsageRecord, day_score, utc_day
from shared.usage import record as usage_record

END = "end"
ERROR = "error"
TOKEN = "token"
THROTTLED = "throttled"

PUBLIC_FIELDS = ("status", "model", "account_id", "attempts")

# kombu's Redis transport keeps delivered, unacknowledged messages here (its defaults).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def batch_keys(batch_id: str) -> list[str]:
    """The batch keys a finishing job touches (when it is a batch line)."""
    return [keys.batch(batch_id), keys.batch_results(batch_id), keys.batch_errors(batch_id),
            keys.BATCH_IN_FLIGHT, keys.ACTIVE_BATCHES]


def enqueue(pipe, job_id: str, queue: str, now: float) -> None:
    """Queue the job's message on ``pipe`` and remember it (``lua/_enqueue.lua`` in Python):
    the message in the job's hash, the job in the queued-jobs index (see ``requeue_lost``)."""
    message = run_job_message(job_id, queue)
    pipe.hset(keys.job(job_id), "message", message)
    pipe.lpush(queue, message)
    pipe.zadd(keys.QUEUED_JOBS, {job_id: now})


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def new_record(job_id: str, account_id: str, model: str, queue: str, spec: Any, now: float,
               **extra: str) -> dict[str, str]:
    """A queued job's hash."""
    return {"id": job_id, "account_id": account_id, "model": model, "queue": queue, "status": "queued",
            "spec": orjson.dumps(spec).decode(), "created_at": repr(now), "updated_at": repr(now),
            "attempts": "0", **extra}


def iso(ts: str | float | None) -> str | None:
    if ts in (None, ""):
        return None
    return (
        datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _loads(value: str | None) -> Any:
    return None if value in (None, "") else orjson.loads(value)


@dataclass
class Claim:
    outcome: str  # claimed | missing | terminal | busy | exhausted
    detail: str = ""
    record: dict[str, str] = field(default_factory=dict)  # when claimed: the job's hash
    events: list[Event] = field(default_factory=list)  # when claimed: those already published

    @property
    def attempts(self) -> int:
        return int(self.detail) if self.detail else 0


class JobStore:
    def __init__(self, redis, settings: Settings, channel: ScriptChannel | None = None):
        self.redis = redis
        self.settings = settings
        self.channel = channel  # where the script calls go, if not through ``redis``
        self.scripts = Scripts(redis, channel)

    # --- API side -------------------------------------------------------------------------

    async def create(
        self, *, account_id: str, model: str, queue: str, spec: dict[str, Any], job_id: str | None = None
    ) -> dict[str, str]:
        """Record the job and queue it, in one script."""
        job_id = job_id or new_job_id()
        now = time.time()
        record = new_record(job_id, account_id, model, queue, spec, now)
        await self.scripts.create_job(
            keys=[keys.job(job_id), queue, keys.QUEUED_JOBS, keys.account_jobs(account_id)],
            args=[job_id, repr(now), self.settings.job_retention_seconds, run_job_message(job_id, queue),
                  *(item for pair in record.items() for item in pair)],
        )
        return record

    async def feed_batch(self, batch_id: str, account_id: str, entries: list[str]) -> list[str]:
        """Turn the first ``len(entries)`` staged lines of a batch into queued jobs, in one
        transaction with their removal from the staging list (lines are never lost or doubled)."""
        now = time.time()
        retention = self.settings.job_retention_seconds
        ids = []
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.ltrim(keys.batch_pending(batch_id), len(entries), -1)
            for raw in entries:
                entry = orjson.loads(raw)
                job_id = new_job_id()
                ids.append(job_id)
                pipe.hset(keys.job(job_id), mapping=new_record(
                    job_id, account_id, entry["model"], entry["queue"], entry["spec"], now,
                    batch_id=batch_id, custom_id=entry["custom_id"]))
                enqueue(pipe, job_id, entry["queue"], now)
                pipe.expire(keys.job(job_id), retention)
            pipe.sadd(keys.batch_jobs(batch_id), *ids)
            pipe.expire(keys.batch_jobs(batch_id), retention)
            pipe.incrby(keys.BATCH_IN_FLIGHT, len(ids))
            await pipe.execute()
        return ids

    async def get(self, job_id: str) -> dict[str, str] | None:
        record = await self.redis.hgetall(keys.job(job_id))
        return record or None

    async def get_for(self, job_id: str, account_id: str) -> dict[str, str] | None:
        """The job if it belongs to ``account_id``; None otherwise, exactly as if missing."""
        record = await self.get(job_id)
        if record is None or record.get("account_id") != account_id:
            return None
        return record

    async def cancel(self, job_id: str, account_id: str, model: str, batch_id: str = "") -> tuple[str, str]:
        now = time.time()
        day = utc_day(now)
        result = await self.scripts.cancel_job(
            keys=[
                keys.job(job_id), keys.job_cancel(job_id), keys.job_lease(job_id),
                keys.RUNNING_JOBS, keys.job_events(job_id), keys.job_channel(job_id),
                keys.account_waiting(account_id), keys.THROTTLED_ACCOUNTS,
                keys.usage_day(account_id, day), keys.usage_days(account_id), keys.USAGE_ACCOUNTS,
                *batch_keys(batch_id),
            ],
            args=[repr(now), self.settings.job_retention_seconds, job_id,
                  orjson.dumps({"status": "cancelled"}).decode(), account_id, int(now * 1000),
                  model, day, day_score(day), self.settings.usage_retention_days * 86400],
        )
        return result[0], (result[1] if len(result) > 1 else "")

    # --- worker side ----------------------------------------------------------------------

    async def claim(self, job_id: str, token: str) -> Claim:
        """Claim the job for this attempt; a successful claim carries the job's record and the
        events already published, read in the same round trip."""
        result = await self.scripts.claim_job(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, keys.job_events(job_id),
                  keys.QUEUED_JOBS],
            args=[token, int(self.settings.lease_seconds * 1000), repr(time.time()),
                  self.settings.max_deliveries, job_id],
        )
        if result[0] != "claimed":
            return Claim(result[0], result[1] if len(result) > 1 else "")
        flat = result[2]
        record = dict(zip(flat[::2], flat[1::2]))
        events = [stream_event(entry_id, dict(zip(flat_fields[::2], flat_fields[1::2])))
                  for entry_id, flat_fields in result[3]]
        return Claim("claimed", result[1], record, events)

    async def renew(self, job_id: str, token: str) -> tuple[bool, bool]:
        owned, cancel = await self.scripts.renew_lease(
            keys=[keys.job_lease(job_id), keys.RUNNING_JOBS, keys.job_cancel(job_id)],
            args=[token, int(self.settings.lease_seconds * 1000), repr(time.time()), job_id],
        )
        return bool(owned), bool(cancel)

    async def publish(self, job_id: str, token: str, events: list[tuple[int, str, str]]) -> int:
        """Append and publish events; -1 if the attempt lost the job, else the cancel flag."""
        (outcome,) = await self.publish_many([(job_id, token, events)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def publish_many(self, batch: list[tuple[str, str, list[tuple[int, str, str]]]]) -> list[Any]:
        """``publish`` for several jobs in one round trip. Per job: its outcome, or the
        ``ResponseError`` of an event it could not append (raised by ``publish``)."""
        job_keys: list[str] = []
        args: list[Any] = [self.settings.stream_max_events, self.settings.job_retention_seconds]
        for job_id, token, events in batch:
            job_keys += [keys.job_events(job_id), keys.job_channel(job_id), keys.job_lease(job_id),
                         keys.job_cancel(job_id)]
            args += [token, len(events)]
            for event in events:
                args.extend(event)
        outcomes = await self.scripts.publish_events(keys=job_keys, args=args)
        return [ResponseError(f"could not append the events of job {job_id}: {outcome}")
                if isinstance(outcome, str) else int(outcome) for (job_id, _, _), outcome in zip(batch, outcomes)]

    async def finish(
        self, job_id: str, token: str, status: str, fields: dict[str, str],
        events: list[tuple[int, str, str]], account_id: str, usage: UsageRecord, batch_id: str = "",
    ) -> bool:
        """Finish the attempt's job: fields, last events and its one usage record, atomically."""
        now = time.time()
        fields = {**fields, "finished_at": repr(now), "usage": orjson.dumps(usage.as_dict()).decode()}
        args: list[Any] = [
            token, status, repr(now), self.settings.job_retention_seconds, self.settings.stream_max_events,
            job_id, usage.model, usage.day, day_score(usage.day), usage.prompt_tokens,
            usage.completion_tokens, usage.cost_nanousd, usage.latency_ms,
            self.settings.usage_retention_days * 86400, len(fields),
        ]
        for name, value in fields.items():
            args.extend((name, value))
        for event in events:
            args.extend(event)
        return bool(await self.scripts.finish_job(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, keys.job_events(job_id),
                  keys.job_channel(job_id), keys.usage_day(account_id, usage.day),
                  keys.usage_days(account_id), keys.USAGE_ACCOUNTS, *batch_keys(batch_id)],
            args=args,
        ))

    async def fail_unclaimed(self, job_id: str, code: str, message: str) -> None:
        """Fail a job no attempt may own any more (its deliveries are used up)."""
        token = f"final-{uuid.uuid4().hex}"
        lease = keys.job_lease(job_id)
        if not await self.redis.set(lease, token, nx=True, px=int(self.settings.lease_seconds * 1000)):
            return
        record = await self.get(job_id) or {}
        seq = await last_event_seq(self.redis, job_id) + 1
        error = orjson.dumps({"code": code, "message": message}).decode()
        # What earlier attempts consumed is unknown once their workers are gone: the record
        # counts the job, and the completion tokens subscribers received.
        delivered = max(seq - 1, 0)
        usage = usage_record(None, record.get("model", ""), 0, delivered,
                             float(record["started_at"]) if record.get("started_at") else None, estimated=True)
        await self.finish(job_id, token, "failed", {"error": error}, [(seq, ERROR, error)],
                          record.get("account_id", ""), usage, record.get("batch_id", ""))

    async def park(self, job_id: str, token: str, seq: int, next_try_at: float, reason: str) -> str:
        """Send a claimed job back to waiting (throttled), which frees its worker slot:
        "parked", "lost" (another attempt owns it), or "cancel" (a cancel was requested: not
        parked, the attempt still owns it and ends it)."""
        data = orjson.dumps({"status": "throttled", "next_try_at": iso(next_try_at),
                             "next_try_epoch": round(next_try_at, 3), "reason": reason}).decode()
        outcome = await self.scripts.park_job(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, keys.job_events(job_id),
                  keys.job_channel(job_id), keys.job_cancel(job_id)],
            args=[token, repr(time.time()), repr(next_try_at), reason, seq, data,
                  self.settings.job_retention_seconds, job_id],
        )
        return {0: "lost", 1: "parked", 2: "cancel"}[int(outcome)]

    async def hand_back(self, job_id: str, token: str) -> bool:
        """Give a running job back to its queue (worker shutdown); the next attempt continues."""
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:
            return False
        return bool(await self.scripts.hand_back(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, queue, keys.QUEUED_JOBS],
            args=[token, repr(time.time()), job_id, run_job_message(job_id, queue)],
        ))

    async def requeue_waiting(self, job_id: str, account_id: str, watchdog_seconds: float = 5.0) -> bool:
        """Queue an account's first waiting job for another admission attempt."""
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:  # expired: out of the line, and whoever is first now gets its turn
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.account_waiting(account_id), job_id)
                pipe.zcard(keys.account_waiting(account_id))
                _, waiting = await pipe.execute()
            if waiting:
                await self.redis.zadd(keys.THROTTLED_ACCOUNTS, {account_id: int(time.time() * 1000)})
            return False
        return bool(await self.scripts.requeue_waiting(
            keys=[keys.job(job_id), keys.account_waiting(account_id), keys.THROTTLED_ACCOUNTS, queue,
                  keys.QUEUED_JOBS],
            args=[job_id, repr(time.time()), account_id, int((time.time() + watchdog_seconds) * 1000),
                  run_job_message(job_id, queue), int(time.time() * 1000)],
        ))

    async def requeue_unclaimed(self, older_than: float) -> list[str]:
        """Jobs whose message a worker took but never started (it died holding them).

        Celery prefetches at most as many messages as a worker has threads, so a live worker
        starts every message it takes at once, and the job's claim follows within moments. A
        message still unacknowledged after ``older_than`` seconds whose job was never claimed
        belongs to a dead worker; the broker would only give it back after the visibility
        timeout. Such a job is queued again now and the stale entry dropped (if the worker was
        alive after all, its late start finds the job taken and does nothing)."""
        cutoff = time.time() - older_than
        tags = await self.redis.zrangebyscore(UNACKED_INDEX, "-inf", cutoff, start=0, num=1000)
        if not tags:
            return []
        payloads = await self.redis.hmget(UNACKED, tags)
        requeued = []
        for tag, payload in zip(tags, payloads):
            if payload is None:
                await self.redis.zrem(UNACKED_INDEX, tag)
                continue
            try:
                message = orjson.loads(payload)[0]
                job_id = message["headers"]["id"]
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                continue
            record = await self.redis.hmget(keys.job(job_id), "status", "queue", "updated_at")
            status, queue, updated = record
            if status != "queued" or queue is None or float(updated or 0) > cutoff:
                continue
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.job(job_id), "updated_at", repr(time.time()))
                enqueue(pipe, job_id, queue, time.time())
                pipe.hdel(UNACKED, tag)
                pipe.zrem(UNACKED_INDEX, tag)
                await pipe.execute()
            requeued.append(job_id)
        return requeued

    async def lapsed_jobs(self, now: float) -> list[str]:
        return await self.redis.zrangebyscore(keys.RUNNING_JOBS, "-inf", now, start=0, num=500)

    async def requeue_lapsed(self, job_id: str) -> bool:
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:
            await self.redis.zrem(keys.RUNNING_JOBS, job_id)
            return False
        return bool(await self.scripts.requeue_lapsed(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.RUNNING_JOBS, queue, keys.QUEUED_JOBS],
            args=[job_id, repr(time.time()), run_job_message(job_id, queue)],
        ))

    async def requeue_lost(self, older_than: float) -> list[str]:
        """Jobs queued more than ``older_than`` seconds ago whose message is neither on their
        queue nor held by a worker: lost between kombu's BRPOP and its unacked record (a
        worker killed in that instant). Each gets a new message (``lua/requeue_lost.lua``)."""
        now = time.time()
        cutoff = now - older_than
        candidates = await self.redis.zrangebyscore(keys.QUEUED_JOBS, "-inf", cutoff, start=0, num=200)
        requeued = []
        for job_id in candidates:
            queue = await self.redis.hget(keys.job(job_id), "queue")
            if queue is None:
                await self.redis.zrem(keys.QUEUED_JOBS, job_id)
                continue
            outcome = await self.scripts.requeue_lost(
                keys=[keys.job(job_id), queue, keys.QUEUED_JOBS, UNACKED],
                args=[job_id, repr(now), run_job_message(job_id, queue), repr(cutoff)],
            )
            if outcome == "requeued":
                requeued.append(job_id)
        return requeued


async def last_event_seq(redis, job_id: str) -> int:
    last = await redis.xrevrange(keys.job_events(job_id), count=1)
    return int(last[0][0].split("-")[1]) if last else 0


def public_view(record: dict[str, str]) -> dict[str, Any]:
    """The job as ``GET /v4/jobs/{id}`` shows it."""
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
        "next_try_at": iso(record.get("next_try_at")) if record.get("status") == "throttled" else None,
        "throttle_reason": record.get("throttle_reason") if record.get("status") == "throttled" else None,
        "result": _loads(record.get("result")),
        "usage": _loads(record.get("usage")),
        "error": _loads(record.get("error")),
        "stream_url": f"/v4/jobs/{record['id']}/stream",
    }
