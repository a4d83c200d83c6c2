"""The batch feeder: hands staged batch lines to the queue in chunks, within the fleet-wide
in-flight budget (``CHATFLEET_BATCH_MAX_IN_FLIGHT``) and round robin across accounts (then
across each account's batches), and winds
down cancelled and expired batches. One worker of the fleet at a time.

The local model's lines share its queue with interactive jobs, and its slots are few: they get
a budget of their own, the fleet's local slots less ``CHATFLEET_BATCH_LOCAL_SLOTS_KEPT``, so that
no line ever waits on that queue ahead of an interactive job and a slot is left free for one.

The API validates and stages a batch's lines (``api/batches.py``); each line then runs as a job
like any other, and the script that finishes a line's job writes its result line and counts it
(``lua/_batch_line.lua``).
"""

from __future__ import annotations

import time

from shared import keys
from shared.jobs import JobStore, new_job_id, new_record
from shared.jobspec import StagedLine
from shared.queue import run_job_message
from shared.settings import Settings
from worker.services.base import Service

FEED_SECONDS = 0.1
CHUNK = 500
LOCAL_CAP_SECONDS = 2.0  # how long the local model's slot count, read from the heartbeats, is kept
TERMINAL = ("succeeded", "failed", "cancelled")


def within_local_budget(lines: list[StagedLine], budget: int) -> list[StagedLine]:
    """The first of ``lines`` (a batch's next staged ones, in order) that keep the local model's
    lines within ``budget``: the lines are handed out in order, so the first local line past it
    ends the chunk."""
    taken = 0
    for i, line in enumerate(lines):
        if line.queue == keys.QUEUE_LOCAL:
            if taken >= budget:
                return lines[:i]
            taken += 1
    return lines


class BatchFeeder(Service):
    name = "batch feeder"
    failure = "batch feeder pass failed"
    lock = keys.BATCH_FEEDER_LOCK
    lock_ms = 30_000

    def __init__(self, store: JobStore, settings: Settings):
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self._local_cap: tuple[float, int] | None = None  # (read at, monotonic; the cap)

    def interval(self) -> float:
        return FEED_SECONDS

    async def due(self) -> bool:
        # One command while idle (redis-py's cluster client splits it by slot).
        return bool(await self.redis.exists(*(keys.active_batches(shard) for shard in range(keys.SHARDS))))

    async def run_pass(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.zrange(keys.active_batches(shard), 0, -1, withscores=True)
                pipe.get(keys.batch_in_flight(shard))
                pipe.get(keys.batch_local_in_flight(shard))
            found = await pipe.execute()
        # Oldest first across the shards, as one list would be.
        active = [b for b, _ in sorted((pair for listed in found[::3] for pair in listed), key=lambda p: p[1])]
        if not active:
            return
        in_flight = sum(int(n or 0) for n in found[1::3])
        budget = self.settings.batch_max_in_flight - in_flight
        local_budget = await self.local_cap() - sum(int(n or 0) for n in found[2::3])
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in active:
                pipe.hgetall(keys.batch(batch_id))
            records = await pipe.execute()
        # Round robin across accounts, then across each account's batches: an account's many
        # batches share one account's part.
        batches_of: dict[str, int] = {}
        for record in records:
            if record and record.get("status") == "in_progress" and not record.get("ending"):
                batches_of[record.get("account_id", "")] = batches_of.get(record.get("account_id", ""), 0) + 1
        per_account = budget // max(len(batches_of), 1) if budget > 0 else 0
        now = time.time()
        for batch_id, record in zip(active, records):
            share = max(per_account // batches_of.get(record.get("account_id", ""), 1), 1) if budget > 0 else 0
            if not record:
                await self.redis.zrem(keys.active_batches(keys.shard_of(batch_id)), batch_id)
                continue
            if not record.get("ending") and float(record.get("expires_at") or "inf") < now:
                await self.redis.hset(keys.batch(batch_id), mapping={"ending": "expired"})
                record["ending"] = "expired"
            if record.get("ending"):
                await self.wind_down(batch_id, record)
                continue
            if share <= 0 or record.get("status") != "in_progress":
                continue
            entries = await self.redis.lrange(keys.batch_pending(batch_id), 0, min(share, CHUNK) - 1)
            lines = within_local_budget([StagedLine.load(raw) for raw in entries], local_budget)
            if lines:
                scope = {k: record[k] for k in ("key_id", "key_models") if record.get(k)}
                await self.feed(batch_id, record["account_id"], lines, scope)
                local_budget -= sum(line.queue == keys.QUEUE_LOCAL for line in lines)

    async def local_cap(self) -> int:
        """How many of the local model's batch lines may be in flight: its slots across the live
        workers, less those kept for interactive work (``CHATFLEET_BATCH_LOCAL_SLOTS_KEPT``), at
        least one. Read from the heartbeats every few seconds."""
        now = time.monotonic()
        if self._local_cap is None or now - self._local_cap[0] > LOCAL_CAP_SECONDS:
            since = time.time() - 3 * self.settings.worker_heartbeat_seconds
            live = await self.redis.zrangebyscore(keys.WORKERS, since, "+inf")
            slots = 0
            if live:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for hostname in live:
                        pipe.hget(keys.worker(hostname), "local_slots")
                    slots = sum(int(n or 0) for n in await pipe.execute())
            self._local_cap = (now, max(slots - self.settings.batch_local_slots_kept, 1))
        return self._local_cap[1]

    async def feed(self, batch_id: str, account_id: str, lines: list[StagedLine],
                   scope: dict[str, str] | None = None) -> list[str]:
        """Turn the first ``len(lines)`` staged lines of a batch into queued jobs, in one script
        with their removal from the staging list (``lua/feed_batch.lua``: never lost or doubled),
        then push their messages."""
        now = time.time()
        shard = keys.shard_of(batch_id)  # the batch's lines are jobs of its shard
        job_keys = [keys.batch_pending(batch_id), keys.batch_jobs(batch_id), keys.batch_in_flight(shard),
                    keys.queued_jobs(shard), keys.batch_local_in_flight(shard)]
        args: list = [len(lines), repr(now), self.settings.job_retention_seconds,
                      sum(line.queue == keys.QUEUE_LOCAL for line in lines)]
        ids = []
        messages: dict[str, list[bytes]] = {}
        for line in lines:
            job_id = new_job_id(shard)
            ids.append(job_id)
            # The batch's key: its limits, budget and models apply to each line.
            record = new_record(job_id, account_id, line.model, line.queue, bytes(line.spec), now,
                                batch_id=batch_id, custom_id=line.custom_id, **(scope or {}))
            message = run_job_message(job_id, line.queue)
            messages.setdefault(line.queue, []).append(message)
            job_keys.append(keys.job(job_id))
            args += [job_id, message, len(record)]
            for pair in record.items():
                args.extend(pair)
        if await self.store.scripts.feed_batch(keys=job_keys, args=args):
            for queue, queued in messages.items():
                await self.store.broker.push(queue, *queued)
        return ids

    async def wind_down(self, batch_id: str, record: dict[str, str]) -> None:
        """A cancelled or expired batch: lines never handed out become error lines; lines that
        were are cancelled like any job (running ones stop, queued ones never start)."""
        ending = record["ending"]
        message = ("the batch was cancelled before this request ran" if ending == "cancelled"
                   else "the batch's completion window ended before this request ran")
        await self.store.scripts.drain_batch(
            keys=[keys.batch(batch_id), keys.batch_pending(batch_id), keys.batch_errors(batch_id),
                  keys.active_batches(keys.shard_of(batch_id))],
            args=[CHUNK, f"batch_{ending}", message, repr(time.time()), batch_id],
        )
        if record.get("wound_down"):
            return
        async for job_id in self.redis.sscan_iter(keys.batch_jobs(batch_id), count=500):
            status, model = await self.redis.hmget(keys.job(job_id), "status", "model")
            if status and status not in TERMINAL:
                await self.store.cancel(job_id, record["account_id"], model, batch_id)
        await self.redis.hset(keys.batch(batch_id), "wound_down", "1")
