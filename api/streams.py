"""Following a job's events for a client: live pub/sub as the fast path, the stream as the truth.

Pub/sub is at-most-once, so a follower treats live messages as a fast path only: it reads the
job's stream for whatever it has not seen (on start, after a gap in the sequence, after a
reconnection, and when idle), which is what makes late joins and resumes exact. One pub/sub
connection per API process (``PubSubHub``) serves every follower in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.events import Event, parse_live, read_events

log = logging.getLogger(__name__)

READ_RETRY_SECONDS = 0.5

_RESYNC = object()
_SHUTDOWN = object()
# Yielded by follow() when this process is shutting down: the client should reconnect
# (to another instance) with Last-Event-ID.
SHUTDOWN = "shutdown"


class PubSubHub:
    """One pub/sub connection per process, fanned out to any number of local followers."""

    QUEUE_SIZE = 10_000

    def __init__(self, redis):
        self._redis = redis
        self._pubsub = None
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.stopping = False

    def shutdown(self) -> None:
        """Tell every follower to end now (the process is stopping)."""
        self.stopping = True
        for channel in list(self._subscribers):
            self._deliver(channel, _SHUTDOWN)

    @property
    def active(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        self._reader = asyncio.create_task(self._read_forever(), name="pubsub-hub")

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue(self.QUEUE_SIZE)
        async with self._lock:
            first = channel not in self._subscribers
            self._subscribers.setdefault(channel, set()).add(queue)
            if first:
                self._confirmed[channel] = asyncio.Event()
                assert self._pubsub is not None  # started (``start``) before anyone follows
                await self._pubsub.subscribe(channel)
                self._wakeup.set()
        try:
            # Until the server confirms the subscription a message could slip past; the
            # follower reads the stream after this, and idles into a re-read, so it cannot.
            # (asyncio.timeout, not wait_for: on Python 3.11 wait_for makes a task per call)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._confirmed[channel].wait()
            yield queue
        finally:
            async with self._lock:
                subs = self._subscribers.get(channel)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        del self._subscribers[channel]
                        self._confirmed.pop(channel, None)
                        with contextlib.suppress(Exception):
                            assert self._pubsub is not None  # subscribed through it
                            await self._pubsub.unsubscribe(channel)

    def _deliver(self, channel: str, item) -> None:
        for queue in self._subscribers.get(channel, ()):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # A slow follower: drop what it has queued and make it re-read the stream
                # (or stop, if that is what this was).
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(_SHUTDOWN if item is _SHUTDOWN else _RESYNC)

    async def _read_forever(self) -> None:
        assert self._pubsub is not None  # made by ``start`` before it starts this reader
        while True:
            try:
                if not self._subscribers:
                    # Sleep until someone subscribes (not a poll: a new follower's
                    # confirmation must not wait for the next tick).
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # Blocking, without a timeout: a read with one costs an asyncio timeout armed and
                # cancelled per message (an eighth of the API's CPU relaying a thousand streams).
                # Nothing needs the loop to turn while no message comes: a new subscription's
                # confirmation, and the last one's end, arrive as messages.
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
                if message is None:
                    continue
                channel = message["channel"]
                if message["type"] == "subscribe":
                    if channel in self._confirmed:
                        self._confirmed[channel].set()
                elif message["type"] == "message":
                    self._deliver(channel, parse_live(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection lost: messages may be gone, resync all
                log.warning("pub/sub connection lost (%s); followers re-read their streams", exc)
                for channel in list(self._subscribers):
                    self._deliver(channel, _RESYNC)
                await asyncio.sleep(0.5)


async def follow(
    redis, hub: PubSubHub, job_id: str, after: int = 0, idle_seconds: float = 5.0
) -> AsyncGenerator[Event | None, None]:
    """Yield the job's events after ``after`` in order, each once, until a terminal one.

    Yields None when nothing happened for ``idle_seconds`` (a chance to send a keep-alive), and
    while Redis does not answer (the events are read again once it does).
    """
    last = after
    if hub.stopping:
        yield Event(last, SHUTDOWN, "")
        return
    async with hub.subscription(keys.job_channel(job_id)) as queue:
        need_read = True
        failures = 0  # consecutive reads that Redis did not answer
        while True:
            if need_read:
                try:
                    missed = await read_events(redis, job_id, last)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    # Redis restarting, loading, or out of connections: the stream holds
                    # everything, so try again shortly (with a keep-alive meanwhile) rather
                    # than cut the client off. Other errors are not passing: they propagate.
                    if hub.stopping:
                        yield Event(last, SHUTDOWN, "")
                        return
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("could not read the events of %s (%s); retrying", job_id, exc)
                    await asyncio.sleep(READ_RETRY_SECONDS * random.uniform(0.5, 1.5))
                    yield None
                    continue
                failures = 0
                need_read = False
                for event in missed:
                    yield event
                    last = event.seq
                    if event.terminal:
                        return
            if queue.empty():
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for makes a task per event)
                try:
                    async with asyncio.timeout(idle_seconds):
                        item = await queue.get()
                except TimeoutError:
                    need_read = True
                    yield None
                    continue
            else:
                item = queue.get_nowait()
            if item is _RESYNC:
                need_read = True
                continue
            if item is _SHUTDOWN:
                yield Event(last, SHUTDOWN, "")
                return
            if item.seq <= last:
                continue
            if item.seq != last + 1:
                need_read = True
                continue
            yield item
            last = item.seq
            if item.terminal:
                return
