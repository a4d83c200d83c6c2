"""The Celery broker, where job messages go once their job is recorded in the state store.

The fleet keeps two kinds of data: the state of jobs, accounts, limits and usage (the state
store, ``CHATFLEET_STATE_REDIS_URL``) and Celery's queues (the broker, ``CHATFLEET_REDIS_URL``:
kombu's Redis transport, a list per queue and the unacknowledged-message hash and index). They
may be one Redis (the default) or two, so that the state store can be scaled apart from the
broker. No script touches both: every script that queues a job stages its message in the job's
hash (``lua/_stage.lua``), and the caller pushes it here afterwards (made again, as script calls
are, when the connection is lost). A caller that dies in between, or whose push fails past its
retries, leaves the job queued with its message nowhere, which the reaper finds and pushes (``worker/queue/recovery.py``, within about
2.4 lease periods): nothing is lost, and a message pushed twice runs once (each attempt must
claim its job). So a broker apart from the state store that is down does not refuse jobs: the
API records them and answers 202 (``JobStore.create``), and they run once the broker is back. A
503 would have the client submit the job again, and both would run.

The broker may also be RabbitMQ (``CHATFLEET_BROKER_URL=amqp://...``, ``AmqpBroker``): the
same staged message is published with publisher confirms to a durable queue as a persistent
message, and once RabbitMQ confirmed it the job's record names it (field ``pushed``,
``lua/mark_pushed.lua``): a queued job whose current message was confirmed is held by RabbitMQ
(on its queue, or unacknowledged by a worker, which RabbitMQ redelivers if that worker's
connection goes), so the reaper's ``requeue_lost`` pushes only the messages never confirmed,
and ``requeue_unclaimed`` has nothing to do (RabbitMQ has no visibility timeout to wait out).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import queue
import threading
import time
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared import keys
from shared.connections import async_redis
from shared.queue import delivery_tag
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts

log = logging.getLogger(__name__)


class Broker:
    """Pushes messages onto Celery's queues; ``redis`` (an asyncio client of the broker's Redis)
    also serves the reaper's reads of kombu's bookkeeping. Through ``channel`` where one is
    given (``shared.scriptchannel``: a push costs a fraction of redis-py's client)."""

    def __init__(self, redis, channel: ScriptChannel | None = None, owns: bool = False):
        self.redis = redis
        self.channel = channel
        self.owns = owns  # whether ``close`` closes the clients (they are not the state store's)
        self.apart = owns  # a Redis of its own, not the state store's: it may fail while that one works

    async def push(self, queue: str, *messages: str | bytes) -> None:
        if not messages:
            return
        # Made again when the connection is lost (on the channel as redis-py's client does): a
        # message pushed twice runs once, a message not pushed waits for the reaper.
        if self.channel is not None:
            await self.channel.command("LPUSH", queue, *messages)
        else:
            await self.redis.lpush(queue, *messages)

    async def held(self, queue: str, message: str) -> bool:
        """Whether ``message`` is on its queue or held, unacknowledged, by a worker."""
        tag = delivery_tag(message)
        # The queue first: a message a worker takes meanwhile leaves the list before it is
        # recorded unacknowledged, so that read in this order it is seen in one or the other.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpos(queue, message)
            pipe.hexists(keys.UNACKED, tag or "")
            position, unacked = await pipe.execute()
        return bool(tag and unacked) or position is not None

    async def close(self) -> None:
        """Close the clients this broker opened (none when it shares the state store's)."""
        if self.owns:
            if self.channel is not None:
                await self.channel.close()
            await self.redis.aclose()


class BrokerUnavailable(RedisConnectionError):
    """RabbitMQ could not take a message (past the retries). A Redis connection error in kind, so
    that every caller that copes with an unreachable store copes with it alike (the API answers
    503 with Retry-After; the reaper and the feeder try again on their next pass)."""


class AmqpBroker:
    """Publishes job messages to RabbitMQ, each confirmed by the broker before ``push`` returns,
    then records in each job that its message was confirmed. ``state`` is the state store's
    client, ``scripts`` its scripts.

    kombu's AMQP client blocks and is not safe to share between threads: one thread of its own
    publishes, on one connection in confirm mode. It takes every push waiting, publishes all
    their messages, then waits for RabbitMQ's confirms of the lot, so that one confirm (and
    RabbitMQ's one write to disk) serves every push that arrived meanwhile: with 50 clients, a
    confirm round trip per message would bound the API at a few hundred jobs per second. A
    batch that fails on a lost connection (or a refusal) is published again on a new one, up to
    ``ATTEMPTS`` times (a message published twice runs once); past that, its pushes raise
    ``BrokerUnavailable`` and their jobs wait for the reaper, as with Redis."""

    ATTEMPTS = 4
    CONFIRM_TIMEOUT = 10.0
    MAX_BATCH = 500  # messages per confirm round
    DOWN_SECONDS = 1.0  # after a batch failed every attempt, pushes fail at once for this long
    PUSH_TIMEOUT = 5.0  # a push not confirmed by then raises (its job waits, recorded, for the reaper)
    SOCKET_TIMEOUT = 10.0  # a read or write RabbitMQ does not take (an alarm, a half-open link)
    redis = None  # no kombu bookkeeping to read (``Recovery.requeue_unclaimed``)
    apart = True  # never the state store

    def __init__(self, url: str, state: Any, scripts: Scripts):
        from kombu import Connection

        self.url = url
        self.state = state
        self.scripts = scripts
        probe = Connection(url)  # not connected: it only names the transport's errors
        self._connection_errors = probe.connection_errors + probe.channel_errors
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._connection = None
        self._channel = None
        self._declared: set[str] = set()
        self._unconfirmed: set[int] = set()
        self._refused = False
        self._sent = 0
        self._down_until = 0.0  # monotonic: RabbitMQ refused the last batch; fail at once until then
        self._returned = False  # RabbitMQ handed back a message it could route nowhere
        self._closed = False

    # --- on the publishing thread ------------------------------------------------------------

    def _open(self):
        from kombu import Connection

        connection = Connection(self.url, connect_timeout=5, transport_options={
            "read_timeout": self.SOCKET_TIMEOUT, "write_timeout": self.SOCKET_TIMEOUT})
        connection.connect()
        channel = connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._connection, self._channel, self._declared, self._sent = connection, channel, set(), 0
        self._unconfirmed = set()

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            # Without the closing handshake, which a broken link would wait on forever.
            try:
                connection.collect()
            except Exception:  # noqa: BLE001 - it is broken already; a new one replaces it
                pass

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {tag for tag in self._unconfirmed if tag > delivery_tag}
        else:
            self._unconfirmed.discard(delivery_tag)

    def _on_return(self, *args) -> None:
        self._returned = True  # the queue is gone (deleted since it was declared): declare it again

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused = True
        self._on_ack(delivery_tag, multiple)

    def _publish_batch(self, batch: list[tuple[str, tuple]]) -> None:
        """Every message of ``batch`` published and confirmed, or BrokerUnavailable."""
        from amqp import Message
        from kombu.exceptions import OperationalError

        errors = (*self._connection_errors, OperationalError, OSError, TimeoutError)
        for attempt in range(self.ATTEMPTS):
            try:
                if self._channel is None:
                    self._open()
                channel, self._refused, self._returned = self._channel, False, False
                for queue_name, messages in batch:
                    if queue_name not in self._declared:
                        # As Celery's workers declare it (``Queue(name)``): durable, shared.
                        channel.queue_declare(queue=queue_name, durable=True, exclusive=False, auto_delete=False)
                        self._declared.add(queue_name)
                    for message in messages:
                        envelope = orjson.loads(message)
                        properties = envelope["properties"]
                        channel.basic_publish(
                            Message(base64.b64decode(envelope["body"]), content_type=envelope["content-type"],
                                    content_encoding=envelope["content-encoding"],
                                    application_headers=envelope["headers"],
                                    correlation_id=properties["correlation_id"], delivery_mode=2,
                                    priority=properties.get("priority", 0)),
                            exchange="", routing_key=queue_name, mandatory=True)
                        self._sent += 1
                        self._unconfirmed.add(self._sent)
                deadline = time.monotonic() + self.CONFIRM_TIMEOUT
                while self._unconfirmed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("RabbitMQ confirmed nothing in time")
                    self._connection.drain_events(timeout=left)
                if self._refused or self._returned:
                    raise OperationalError("RabbitMQ refused a message (nacked, or its queue is gone)")
                return
            except errors as exc:
                self._drop()
                if attempt + 1 == self.ATTEMPTS:
                    raise BrokerUnavailable(f"RabbitMQ did not take the message: {type(exc).__name__}: {exc}") from exc
                time.sleep(0.05 * 2 ** attempt)
            except BaseException:
                self._drop()  # whatever state the channel is in, it is not to be trusted again
                raise

    def _run(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                self._drop()
                return
            taken, count = [first], len(first[1])
            while count < self.MAX_BATCH:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)  # stop after this batch
                    break
                taken.append(item)
                count += len(item[1])
            try:
                self._publish_batch([(name, messages) for name, messages, _, _ in taken])
                outcome = None
            except BaseException as exc:  # noqa: BLE001 - handed to every push of the batch
                outcome = exc
                self._down_until = time.monotonic() + self.DOWN_SECONDS
            for _, _, loop, future in taken:
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome)
                except RuntimeError:  # that push's event loop is closed: nobody waits for it
                    pass

    # --- on the event loop -----------------------------------------------------------------

    async def push(self, queue_name: str, *messages: str | bytes) -> None:
        if not messages:
            return
        if self._closed:
            raise BrokerUnavailable("the RabbitMQ publisher is closed")
        if time.monotonic() < self._down_until:
            # RabbitMQ refused moments ago: say so at once rather than hold the caller through
            # the retries again (its job waits, recorded, for the reaper).
            raise BrokerUnavailable("RabbitMQ is unavailable (it refused the last messages)")
        if self._thread is None or not self._thread.is_alive():
            with self._thread_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)
                    self._thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._requests.put((queue_name, messages, loop, future))
        try:
            await asyncio.wait_for(future, self.PUSH_TIMEOUT)
        except asyncio.TimeoutError:
            # Still being tried (it may yet land: a message pushed twice runs once).
            raise BrokerUnavailable(f"RabbitMQ did not confirm within {self.PUSH_TIMEOUT:g} s") from None
        marks = [(job_id, tag) for job_id, tag in map(_job_and_tag, messages) if job_id and tag]
        try:
            await asyncio.gather(*(self.scripts.mark_pushed(keys=[keys.job(job_id)], args=[tag])
                                   for job_id, tag in marks))
        except RedisError as exc:
            # The messages are on their queue; unmarked, the reaper pushes them once more later
            # (each runs once).
            log.warning("could not record %d confirmed message(s) as pushed: %s", len(marks), exc)

    async def held(self, queue_name: str, message: str) -> bool:
        """Whether RabbitMQ confirmed ``message``: it then holds it until a worker acknowledges it."""
        job_id, tag = _job_and_tag(message)
        if not job_id or not tag:
            return False
        return await self.state.hget(keys.job(job_id), "pushed") == tag

    async def close(self) -> None:
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._requests.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 15)


def _settle(future: asyncio.Future, outcome: BaseException | None) -> None:
    if future.done():  # its push was cancelled meanwhile
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


def _job_and_tag(message: str | bytes) -> tuple[str | None, str | None]:
    try:
        envelope = orjson.loads(message)
        return envelope["headers"]["id"], envelope["properties"]["delivery_tag"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None, None


def broker_for(state_redis: Any, state_channel: ScriptChannel | None, settings,
               max_connections: int = 50) -> Broker | AmqpBroker:
    """The broker of ``settings``: RabbitMQ's (``AmqpBroker``); the state store's own client and
    channel when both are one Redis; else clients of its own (closed by ``Broker.close``)."""
    if settings.broker_is_amqp:
        return AmqpBroker(settings.broker, state_redis,
                          Scripts(state_redis, state_channel, check_slots=settings.check_slots))
    if settings.state_url == settings.broker:
        return Broker(state_redis, state_channel)
    return Broker(async_redis(settings.broker, max_connections=max_connections),
                  ScriptChannel.for_url(settings.broker), owns=True)
