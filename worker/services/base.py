"""The one interface of a worker's background services, and the loop that runs each of them.

A service makes one ``run_pass`` every ``interval()`` seconds. A fleet-wide service names a
``lock``: a pass runs only in the worker that takes it (``SET NX PX``), and ``due()`` is a cheap
look first, so that an idle fleet takes no lock at all. A pass that fails is logged and the
next one comes as usual: a service never stops its worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod

from shared.scripts import Scripts

log = logging.getLogger(__name__)


class Service(ABC):
    name: str
    #: Fleet-wide: the lock's key (``keys.lock``), held for ``lock_ms`` by the worker whose pass runs.
    lock: str | None = None
    lock_ms: int = 0
    #: Keep the lock until it lapses instead of releasing it after the pass: at most one pass per
    #: ``lock_ms`` in the whole fleet.
    hold_lock: bool = False

    #: What the log says when a pass fails.
    failure = "pass failed"

    @abstractmethod
    def interval(self) -> float:
        """Seconds until the next pass."""

    def first_delay(self) -> float:
        """Seconds from the worker's start to the first pass (an interval, by default)."""
        return self.interval()

    async def due(self) -> bool:
        """Whether a pass has anything to do (before the lock is taken)."""
        return True

    @abstractmethod
    async def run_pass(self) -> None:
        """One pass; errors are logged by ``run_service``."""


async def run_service(service: Service, redis, scripts: Scripts, hostname: str) -> None:
    """Run ``service`` until cancelled: a wait, a pass, and so on. Failures are logged once per
    outage (and again when they change), not once per pass: a pass every 0.1 s while Redis is
    away would fill the log; the recovery says how long it lasted and how many passes failed."""
    await asyncio.sleep(service.first_delay())
    failing: tuple[str, float, int] | None = None  # (what failed, since when, passes failed)
    while True:
        try:
            if await service.due():
                if service.lock is None:
                    await service.run_pass()
                else:
                    await _locked_pass(service, redis, scripts, hostname)
            if failing is not None:
                log.warning("%s: recovered after %d failed passes in %.1f s", service.name, failing[2],
                            time.monotonic() - failing[1])
                failing = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a service outlives a failed pass: the next one tries again
            what = f"{type(exc).__name__}: {exc}"
            if failing is None or failing[0] != what:
                log.warning("%s: %s (logged once until it changes or recovers)", service.failure, exc)
                failing = (what, failing[1] if failing else time.monotonic(), (failing[2] if failing else 0) + 1)
            else:
                failing = (what, failing[1], failing[2] + 1)
        await asyncio.sleep(service.interval())


async def _locked_pass(service: Service, redis, scripts: Scripts, hostname: str) -> None:
    # Who holds the lock, for this one acquisition: released only by its taker.
    holder = f"{hostname}/{uuid.uuid4().hex[:12]}"
    if not await redis.set(service.lock, holder, nx=True, px=service.lock_ms):
        return
    try:
        await service.run_pass()
    finally:
        if not service.hold_lock:
            await scripts.release_lock(keys=[service.lock], args=[holder])
