"""What the state store asks of Celery's broker, whichever it is (``shared/brokers/``)."""

from __future__ import annotations

from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError


class Broker(Protocol):
    """Pushes job messages onto Celery's queues, and tells the reaper whether one is held."""

    #: An asyncio client of the broker's Redis, for the reaper's reads of kombu's bookkeeping
    #: (``Recovery.requeue_unclaimed``); None where there is none (RabbitMQ).
    redis: Any
    #: Whether the broker is apart from the state store: it may fail while that one works.
    apart: bool

    async def push(self, queue: str, *messages: str | bytes) -> None:
        """Every message on ``queue``, or an error (a Redis one in kind: ``BrokerUnavailable``)."""

    async def held(self, queue: str, message: str) -> bool:
        """Whether ``message`` is on its queue or held, unacknowledged, by a worker."""

    async def close(self) -> None: ...


class BrokerUnavailable(RedisConnectionError):
    """RabbitMQ could not take a message (past the retries). A Redis connection error in kind, so
    that every caller that copes with an unreachable store copes with it alike (the API answers
    503 with Retry-After; the reaper and the feeder try again on their next pass)."""


