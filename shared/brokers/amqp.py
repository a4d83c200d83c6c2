"""Celery's broker on RabbitMQ: each job message published with publisher confirms to a durable
queue as a persistent message, and the job's record told once RabbitMQ confirmed it."""

from __future__ import annotations

import asyncio
import base64
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import orjson
from redis.exceptions import RedisError

from shared import keys
from shared.brokers.base import BrokerUnavailable
from shared.scripts import Scripts

log = logging.getLogger(__name__)


class _Channel(Protocol):
    """What this module uses of a channel of kombu's AMQP transport (py-amqp's; both untyped)."""

    events: Mapping[str, set[Callable[..., None]]]

    def confirm_select(self) -> Any: ...
    def queue_declare(self, *, queue: str, durable: bool, exclusive: bool, auto_delete: bool) -> Any: ...
    def basic_publish(self, msg: Any, *, exchange: str, routing_key: str, mandatory: bool) -> Any: ...


class _Connection(Protocol):
    """What this module uses of a kombu ``Connection`` (untyped)."""

    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]

    def connect(self) -> Any: ...
    def channel(self) -> _Channel: ...
    def collect(self) -> None: ...
    def drain_events(self, *, timeout: float) -> Any: ...


# A push for the publishing thread: the queue, its messages, and the event loop and future of
# the push that waits for them (on the thread's queue, None stops it).
_Request = tuple[str, tuple[str | bytes, ...], asyncio.AbstractEventLoop, asyncio.Future[None]]


def _kombu_connection(url: str, **options: Any) -> _Connection:
    from kombu import Connection

    # kombu's Connection is untyped: seen through what this module uses of it.
    return cast(Callable[..., _Connection], Connection)(url, **options)


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
        self.url = url
        self.state = state
        self.scripts = scripts
        probe = _kombu_connection(url)  # not connected: it only names the transport's errors
        self._connection_errors = probe.connection_errors + probe.channel_errors
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._connection: _Connection | None = None
        self._channel: _Channel | None = None
        self._declared: set[str] = set()
        self._unconfirmed: set[int] = set()
        self._refused = False
        self._sent = 0
        self._down_until = 0.0  # monotonic: RabbitMQ refused the last batch; fail at once until then
        self._returned = False  # RabbitMQ handed back a message it could route nowhere
        self._closed = False

    # --- on the publishing thread ------------------------------------------------------------

    def _open(self) -> None:
        connection = _kombu_connection(self.url, connect_timeout=5, transport_options={
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

    def _on_return(self, *args: Any) -> None:
        self._returned = True  # the queue is gone (deleted since it was declared): declare it again

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused = True
        self._on_ack(delivery_tag, multiple)

    def _publish_batch(self, batch: list[tuple[str, tuple[str | bytes, ...]]]) -> None:
        """Every message of ``batch`` published and confirmed, or BrokerUnavailable."""
        from amqp import Message
        from kombu.exceptions import OperationalError

        errors: tuple[type[BaseException], ...] = (*self._connection_errors, OperationalError, OSError, TimeoutError)
        for attempt in range(self.ATTEMPTS):
            try:
                if self._channel is None:
                    self._open()
                channel, self._refused, self._returned = self._channel, False, False
                assert channel is not None and self._connection is not None  # opened together by _open
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
        except TimeoutError:
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
        pushed: str | None = await self.state.hget(keys.job(job_id), "pushed")
        return pushed == tag

    async def close(self) -> None:
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._requests.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 15)


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
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
