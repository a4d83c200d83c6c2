"""Batches validated in the background: ``POST /v1/batches`` answers ``validating`` at once, as
OpenAI does, and the API validates and stages the input file's lines after it has answered.

A validation holds a lease (``keys.batch_validation``, renewed while it runs) and stages its lines
on a list of its own; one script (``lua/settle_validation.lua``) then makes them the batch's
pending lines and starts the batch, or fails it whole with every bad line, only if the lease is
still the validation's. Every API process sweeps the batches being validated
(``keys.BATCHES_VALIDATING``): one whose lease lapsed (its process died) is taken over and
validated again from its input file, so a batch never stays ``validating``, and a validation
that stalled past its lease changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import orjson

from api import batches, files
from shared import keys
from shared.catalog import Catalog
from shared.scripts import Scripts
from shared.settings import Settings

log = logging.getLogger(__name__)

LEASE_MS = 30_000
RENEW_SECONDS = 10.0
SWEEP_SECONDS = 5.0
# A batch listed as validating with no record yet: its creation is under way, left alone this long.
GRACE_SECONDS = 30.0


class Validations:
    """This API process's validations in the background, and its sweep for lapsed ones."""

    def __init__(self, redis: Any, raw: Any, catalog: Catalog, settings: Settings,
                 line_formats: batches.LineFormats):
        self.redis = redis
        self.raw = raw  # replies as bytes: the input file's content
        self.catalog = catalog
        self.settings = settings
        self.line_formats = line_formats
        self.tasks: set[asyncio.Task] = set()
        self._settle = Scripts(redis, check_slots=settings.check_slots).settle_validation

    async def submit(self, account: str, metadata: dict[str, str], window: str,
                     fields: dict[str, str]) -> dict[str, str]:
        """A new batch, ``validating``, its validation started; returns its record. ``fields``
        name its ``input_file_id`` and its lines' ``endpoint``."""
        batches.parse_window(window)
        token = secrets.token_hex(8)
        batch_id = batches.new_batch_id()
        now = time.time()
        # Listed first: a process that dies before the record is written leaves an entry the
        # sweep drops, never a record nobody validates.
        await self.redis.zadd(keys.BATCHES_VALIDATING, {batch_id: now})
        await self.redis.set(keys.batch_validation(batch_id), token, px=LEASE_MS)
        batch_id, _ = await batches.begin(self.redis, account, metadata, window, fields, batch_id=batch_id, now=now)
        self._start(batch_id, token)
        return await self.redis.hgetall(keys.batch(batch_id))

    def _start(self, batch_id: str, token: str) -> None:
        task = asyncio.create_task(self._validate(batch_id, token), name=f"validate {batch_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _validate(self, batch_id: str, token: str) -> None:
        renewing = asyncio.create_task(self._renew(batch_id, token))
        staging = keys.batch_staging(batch_id, token)
        try:
            record = await self.redis.hgetall(keys.batch(batch_id))
            window_seconds = batches.parse_window(record.get("completion_window") or "24h")
            upload = await files.get_own(self.redis, record.get("input_file_id") or "", record["account_id"])
            if upload is None or upload.get("deleted"):
                total, errors, error_count = 0, [{"line": 0, "code": "file_not_found", "message":
                                                  "the input file was deleted before the batch was validated"}], 1
            else:
                endpoint = record.get("endpoint", "")
                formats = ({endpoint: self.line_formats[endpoint]} if endpoint in self.line_formats
                           else self.line_formats)
                spooled = await files.spooled(self.raw, upload["id"])
                # The models the submitting key may use, where it was limited to some.
                catalog = (self.catalog.only(frozenset(orjson.loads(record["key_models"])))
                           if record.get("key_models") else self.catalog)
                try:
                    total, errors, error_count = await batches.stage(
                        self.redis, staging, record["account_id"], files.lines_of(spooled), catalog, formats,
                        self.settings)
                finally:
                    spooled.close()
            settled = await self._settle(
                keys=[keys.batch(batch_id), keys.batch_validation(batch_id), staging, keys.batch_pending(batch_id),
                      keys.active_batches(keys.shard_of(batch_id)), keys.batch_results(batch_id),
                      keys.batch_errors(batch_id)],
                args=[token, repr(time.time()), total, error_count, batches.errors_field(errors, error_count),
                      window_seconds, batches.retention_seconds(self.settings, window_seconds), batch_id])
            if settled:
                await self.redis.zrem(keys.BATCHES_VALIDATING, batch_id)
            else:
                log.warning("batch %s: its validation was taken over by another process; this one's is dropped",
                            batch_id, extra={"batch_id": batch_id})
                await self.redis.delete(staging)
        except asyncio.CancelledError:
            raise  # the process stops: the lease lapses and another process takes the batch over
        except Exception:
            # Left to the sweep: the lease lapses and the validation is made again.
            log.exception("batch %s: its validation failed; it will be made again", batch_id,
                          extra={"batch_id": batch_id})
        finally:
            renewing.cancel()

    async def _renew(self, batch_id: str, token: str) -> None:
        lease = keys.batch_validation(batch_id)
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            with contextlib.suppress(Exception):
                if await self.redis.get(lease) != token:
                    return
                await self.redis.pexpire(lease, LEASE_MS)

    async def sweep(self) -> None:
        """Take over every batch being validated whose lease lapsed; drop entries with no batch."""
        now = time.time()
        for batch_id, listed in await self.redis.zrange(keys.BATCHES_VALIDATING, 0, -1, withscores=True):
            if await self.redis.exists(keys.batch_validation(batch_id)):
                continue
            created, validated = await self.redis.hmget(keys.batch(batch_id), "created_at", "validated_at")
            if created is None and now - listed < GRACE_SECONDS:
                continue
            if created is None or validated is not None:  # never made, or settled (a cancel may come first)
                await self.redis.zrem(keys.BATCHES_VALIDATING, batch_id)
                continue
            token = secrets.token_hex(8)
            if await self.redis.set(keys.batch_validation(batch_id), token, px=LEASE_MS, nx=True):
                log.warning("batch %s: its validation lapsed; validating it again", batch_id,
                            extra={"batch_id": batch_id})
                self._start(batch_id, token)

    async def run_sweeps(self) -> None:
        """Until cancelled: a sweep every few seconds (a failed one is logged once per outage)."""
        failing = False
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
                failing = False
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                if not failing:
                    log.warning("batch validation sweep failed: %s", exc)
                failing = True

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
