"""Job records in Redis and every state transition of a job, each one atomic.

A job is a hash ``chatfleet:job:{id}`` plus its event stream. Jobs may run more than once
(the broker redelivers, a dead worker's lease lapses); a lease fences each attempt so that
only the attempt that owns the job can publish events or finish it. Every transition is one
Lua script (``lua/``), written so that a call made again after its reply was lost changes
nothing: the API creates and cancels jobs, workers claim, publish, park, hand back and finish
them. A transition that queues the job stages its message, pushed to the broker after it
(``shared/brokers/``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.brokers import Broker, RedisBroker
from shared.catalog import Catalog
from shared.events import ERROR, Event, last_event_seq, stream_event
from shared.jobspec import JobSpec, UnreadableSpec
from shared.queue import run_job_message
from shared.results import iso
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts
from shared.settings import Settings
from shared.usage import UsageRecord, day_score, utc_day
from shared.usage import record as usage_record

log = logging.getLogger(__name__)


def batch_keys(batch_id: str, job_id: str) -> list[str]:
    """The batch keys a finishing job touches when it is a batch line (a batch's lines are jobs
    of its shard); for any other job, names in the job's shard that the script leaves alone."""
    shard = keys.shard_of(job_id)
    if not batch_id:
        unused = f"{keys.PREFIX}:{keys.shard_tag(shard)}:batch:-"
        return [unused] * 3 + [keys.batch_in_flight(shard), keys.active_batches(shard),
                               keys.batch_local_in_flight(shard)]
    if keys.shard_of(batch_id) != shard:
        raise ValueError(f"job {job_id} is not in the shard of its batch {batch_id}")
    return [keys.batch(batch_id), keys.batch_results(batch_id), keys.batch_errors(batch_id),
            keys.batch_in_flight(shard), keys.active_batches(shard), keys.batch_local_in_flight(shard)]


def new_job_id(shard: int | None = None) -> str:
    """A new job id; with ``shard``, one in that shard (a batch's line: the batch's shard)."""
    hex_ = uuid.uuid4().hex
    if shard is not None:
        hex_ = hex_[:-2] + f"{shard:02x}"
    return f"job_{hex_}"


# An account's own work in the order of its priority, then of submission: the score of a job in
# its account's lines (held back by fair share, waiting on a limit).
PRIORITY_BANDS = {"high": 0, "default": 1, "low": 2}


def line_score(priority: str, submitted_at: float) -> float:
    """A job's score in its account's lines: its priority's band, then its submission time
    (seconds; the bands 10^11 s apart, exact in a double)."""
    return PRIORITY_BANDS.get(priority, 1) * 1e11 + submitted_at


def usage_keys(account_id: str, day: str, job_id: str) -> list[str]:
    """The ledger's keys an ending job writes, in its shard (``shared/keys.py``)."""
    shard = keys.shard_of(job_id)
    return [keys.usage_day(account_id, day, shard), keys.usage_days(account_id, shard), keys.usage_accounts(shard)]


def new_record(job_id: str, account_id: str, model: str, queue: str, spec: bytes, now: float,
               **extra: str) -> dict[str, str]:
    """A queued job's hash (``spec``: its ``JobSpec``, encoded)."""
    return {"id": job_id, "account_id": account_id, "model": model, "queue": queue, "status": "queued",
            "spec": spec.decode(), "created_at": repr(now), "updated_at": repr(now),
            "attempts": "0", **extra}


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
    """The jobs in the state store (``redis``); their queue messages go to ``broker``, the state
    store's own Redis unless one is given (``shared/brokers/``)."""

    def __init__(self, redis: Any, settings: Settings, channel: ScriptChannel | None = None,
                 broker: Broker | None = None):
        self.redis = redis
        self.settings = settings
        self.channel = channel  # where the script calls go, if not through ``redis``
        self.scripts = Scripts(redis, channel, check_slots=settings.check_slots)
        self.broker: Broker = broker or RedisBroker(redis, channel)

    # --- API side -------------------------------------------------------------------------

    async def create(
        self, *, account_id: str, model: str, queue: str, spec: JobSpec, job_id: str | None = None,
        key_id: str = "", priority: str = "default", key_models: frozenset[str] | None = None,
    ) -> dict[str, str]:
        """Record the job with its message staged (one script), then push the message; unless
        fair share holds it back behind its account's jobs already on the queue (``fair_enter``):
        it is then recorded held, and handed out later (``release``)."""
        job_id = job_id or new_job_id()
        now = time.time()
        extra = {"key_id": key_id} if key_id else {}
        if key_models is not None:  # the models a fallback may be, too
            extra["key_models"] = orjson.dumps(sorted(key_models)).decode()
        if priority != "default":
            extra["priority"] = priority
        places = self.settings.fair_share_places(queue)
        if places and await self.scripts.fair_enter(
            keys=[keys.fair_queued(account_id, queue), keys.fair_ready(account_id, queue),
                  keys.fair_accounts_of(account_id)],
            args=[job_id, int(now * 1000), places, repr(line_score(priority, now)), f"{account_id}|{queue}"],
        ) == "hold":
            extra["held"] = "1"
        record = new_record(job_id, account_id, model, queue, spec.dump(), now, **extra)
        message = await self.scripts.create_job(
            keys=[keys.job(job_id), keys.queued_of(job_id), keys.account_jobs(account_id, keys.shard_of(job_id))],
            args=[job_id, repr(now), self.settings.job_retention_seconds, run_job_message(job_id, queue),
                  *(item for pair in record.items() for item in pair)],
        )
        if extra.get("held") and await self.redis.zscore(keys.fair_ready(account_id, queue), job_id) is None:
            # Handed out between fair_enter and the record (an admission of the account's jobs
            # meanwhile): the worker that handed it out found no record to release, so it goes
            # now, not a sweeper's look-again later. Released twice, it is queued once.
            await self._push_new(job_id, self.release(queue, [job_id]))
        # Only once the record is there: a worker given the message claims the job at once.
        if message:
            await self._push_new(job_id, self.broker.push(queue, message))
        return record

    async def _push_new(self, job_id: str, push: Awaitable[Any]) -> None:
        """A recorded job's message pushed to the broker (``push``). The broker apart down, the
        state store not: the job is recorded and its message staged, so it is accepted, and the
        reaper pushes it once the broker answers (requeue_lost); a 503 here would have the
        client submit it again, and both would run. The record's own Redis failing: the client
        is told (503) and retries."""
        try:
            await push
        except RedisError as exc:
            if not self.broker.apart:
                raise
            log.warning("job %s recorded, its message left for the reaper: %s", job_id, exc,
                        extra={"job_id": job_id})

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
                keys.running_of(job_id), keys.job_events(job_id), keys.job_channel(job_id),
                *usage_keys(account_id, day, job_id), *batch_keys(batch_id, job_id),
            ],
            args=[repr(now), self.settings.job_retention_seconds, job_id,
                  orjson.dumps({"status": "cancelled"}).decode(), account_id, model, day, day_score(day),
                  self.settings.usage_retention_days * 86400],
        )
        if result[0] == "cancelled":
            # Out of the account's waiting line and fair-share lines (its own slot), should it
            # have been in them.
            await self.line(account_id, job_id, "leave")
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in keys.QUEUES:
                    pipe.zrem(keys.fair_ready(account_id, queue), job_id)
                    pipe.zrem(keys.fair_queued(account_id, queue), job_id)
                await pipe.execute()
        return result[0], (result[1] if len(result) > 1 else "")

    async def line(self, account_id: str, job_id: str, action: str, watchdog_ms: int = 0) -> int:
        """The account's waiting line, in the account's slot (``lua/line.lua``)."""
        return int(await self.scripts.line(
            keys=[keys.account_waiting(account_id), keys.throttled_of(account_id)],
            args=[job_id, account_id, action, int(time.time() * 1000), watchdog_ms],
        ))

    # --- worker side ----------------------------------------------------------------------

    async def claim(self, job_id: str, token: str) -> Claim:
        """Claim the job for this attempt; a successful claim carries the job's record and the
        events already published, read in the same round trip."""
        result = await self.scripts.claim_job(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.job_events(job_id),
                  keys.queued_of(job_id)],
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
            keys=[keys.job_lease(job_id), keys.running_of(job_id), keys.job_cancel(job_id)],
            args=[token, int(self.settings.lease_seconds * 1000), repr(time.time()), job_id],
        )
        return bool(owned), bool(cancel)

    async def publish(self, job_id: str, token: str, events: list[tuple[int, str, str]]) -> int:
        """Append and publish events; -1 if the attempt lost the job, else the cancel flag."""
        outcome: int | ResponseError
        (outcome,) = await self.publish_many([(job_id, token, events)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def publish_many(self, batch: list[tuple[str, str, list[tuple[int, str, str]]]]) -> list[Any]:
        """``publish`` for several jobs in one round trip: one script call per shard of theirs,
        sent together. Per job: its outcome, or the ``ResponseError`` of an event it could not
        append (raised by ``publish``)."""
        by_shard: dict[int, list[int]] = {}
        for i, (job_id, _, _) in enumerate(batch):
            by_shard.setdefault(keys.shard_of(job_id), []).append(i)
        calls = []
        for members in by_shard.values():
            job_keys: list[str] = []
            args: list[Any] = [self.settings.stream_max_events, self.settings.job_retention_seconds]
            for i in members:
                job_id, token, events = batch[i]
                job_keys += [keys.job_events(job_id), keys.job_channel(job_id), keys.job_lease(job_id),
                             keys.job_cancel(job_id)]
                args += [token, len(events)]
                for event in events:
                    args.extend(event)
            calls.append(self.scripts.publish_events(keys=job_keys, args=args))
        results: list[Any] = [None] * len(batch)
        for members, outcomes in zip(by_shard.values(), await asyncio.gather(*calls)):
            for i, outcome in zip(members, outcomes):
                results[i] = (ResponseError(f"could not append the events of job {batch[i][0]}: {outcome}")
                              if isinstance(outcome, str) else int(outcome))
        return results

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
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.job_events(job_id),
                  keys.job_channel(job_id), *usage_keys(account_id, usage.day, job_id),
                  *batch_keys(batch_id, job_id)],
            args=args,
        ))

    async def fail_unclaimed(self, job_id: str, code: str, message: str, catalog: Catalog | None = None) -> None:
        """Fail a job no attempt may own any more (its deliveries are used up); ``catalog`` prices
        what it used."""
        token = f"final-{uuid.uuid4().hex}"
        lease = keys.job_lease(job_id)
        if not await self.redis.set(lease, token, nx=True, px=int(self.settings.lease_seconds * 1000)):
            return
        record = await self.get(job_id) or {}
        if record.get("queue") and record.get("account_id"):  # its place in its account's share
            await self.leave_queue(record["account_id"], record["queue"], job_id)
        seq = await last_event_seq(self.redis, job_id) + 1
        error = orjson.dumps({"code": code, "message": message}).decode()
        # What earlier attempts consumed is not known exactly once their workers are gone: the
        # bill counts the prompt of every attempt that was admitted (each sent it upstream), at a
        # typical count, and the completion tokens subscribers received.
        delivered = max(seq - 1, 0)
        try:
            typical = JobSpec.load(record.get("spec") or "", catalog,
                                   self.settings.default_completion_reservation).typical_prompt_tokens
        except UnreadableSpec:  # no prompt to count: only what was delivered is billed
            typical = 0
        prompt_tokens = int(record.get("admitted") or 0) * typical
        spec = catalog.get(record.get("model", "")) if catalog is not None else None
        usage = usage_record(spec, record.get("model", ""), prompt_tokens, delivered,
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
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.job_events(job_id),
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
        message = run_job_message(job_id, queue)
        if not await self.scripts.hand_back(
            keys=[keys.job(job_id), keys.job_lease(job_id), keys.running_of(job_id), keys.queued_of(job_id)],
            args=[token, repr(time.time()), job_id, message],
        ):
            return False
        await self.broker.push(queue, message)
        return True

    async def leave_queue(self, account_id: str, queue: str, job_id: str) -> None:
        """The job no longer holds a place in its account's share of ``queue`` (it ended before
        its admission, which gives the place back otherwise)."""
        await self.redis.zrem(keys.fair_queued(account_id, queue), job_id)

    async def release(self, queue: str, job_ids: list[str]) -> int:
        """Hand jobs that fair share held back to ``queue`` (their account's turn came): each
        staged in its own slot (``lua/release_job.lua``: once, however often asked), then their
        messages pushed together. Returns how many were pushed."""
        now = repr(time.time())
        staged = await asyncio.gather(*(self.scripts.release_job(
            keys=[keys.job(job_id), keys.queued_of(job_id)], args=[job_id, now]) for job_id in job_ids))
        messages = [m for m in staged if m]
        if messages:
            await self.broker.push(queue, *messages)
        return len(messages)

    async def requeue_waiting(self, job_id: str, account_id: str, watchdog_seconds: float = 5.0) -> bool:
        """Queue an account's first waiting job for another admission attempt.

        Three steps, in two slots: the account's line says whether the job is first in it; the
        job, if still throttled, is queued again (``lua/requeue_waiting.lua``, its message
        staged, then pushed); the line then gets its next wake-up (``lua/line.lua``). A job
        that lost its first place in between is admitted or parked again in order, as any
        other; the line is never left without a wake-up."""
        if not await self.line(account_id, job_id, "turn"):
            return False
        queue = await self.redis.hget(keys.job(job_id), "queue")
        if queue is None:  # expired: out of the line, and whoever is first now gets its turn
            await self.line(account_id, job_id, "gone")
            return False
        message = run_job_message(job_id, queue)
        outcome: str = await self.scripts.requeue_waiting(
            keys=[keys.job(job_id), keys.queued_of(job_id)], args=[job_id, repr(time.time()), message])
        watchdog = int((time.time() + watchdog_seconds) * 1000)
        if outcome == "requeued":
            await self.broker.push(queue, message)
        await self.line(account_id, job_id, outcome, watchdog)
        return outcome == "requeued"
