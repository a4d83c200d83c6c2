"""The Celery broker, where job messages go once their job is recorded in the state store.

The fleet keeps two kinds of data: the state of jobs, accounts, limits and usage (the state
store, ``CHATFLEET_STATE_REDIS_URL``) and Celery's queues (the broker, ``CHATFLEET_REDIS_URL``:
kombu's Redis transport, a list per queue and the unacknowledged-message hash and index). They
may be one Redis (the default) or two, so that the state store can be scaled apart from the
broker. No script touches both: every script that queues a job stages its message in the job's
hash (``lua/_stage.lua``), and the caller pushes it here afterwards (made again, as script calls
are, when the connection is lost). A caller that dies in between, or whose push fails past its
retries, leaves the job queued with its message nowhere, which the reaper finds and pushes
(``worker/queue/recovery.py``, within about 2.4 lease periods): nothing is lost, and a message
pushed twice runs once (each attempt must claim its job). So a broker apart from the state store
that is down does not refuse jobs: the API records them and answers 202 (``JobStore.create``),
and they run once the broker is back. A 503 would have the client submit the job again, and both
would run.

The broker may also be RabbitMQ (``CHATFLEET_BROKER_URL=amqp://...``, ``amqp.py``): the
same staged message is published with publisher confirms to a durable queue as a persistent
message, and once RabbitMQ confirmed it the job's record names it (field ``pushed``,
``lua/mark_pushed.lua``): a queued job whose current message was confirmed is held by RabbitMQ
(on its queue, or unacknowledged by a worker, which RabbitMQ redelivers if that worker's
connection goes), so the reaper's ``requeue_lost`` pushes only the messages never confirmed,
and ``requeue_unclaimed`` has nothing to do (RabbitMQ has no visibility timeout to wait out).
"""

from __future__ import annotations

from typing import Any

from shared.brokers.amqp import AmqpBroker
from shared.brokers.base import Broker, BrokerUnavailable
from shared.brokers.redis_lists import RedisBroker
from shared.connections import async_redis
from shared.scriptchannel import ScriptChannel
from shared.scripts import Scripts
from shared.settings import Settings

__all__ = ["AmqpBroker", "Broker", "BrokerUnavailable", "RedisBroker", "broker_for"]


def broker_for(state_redis: Any, state_channel: ScriptChannel | None, settings: Settings,
               max_connections: int = 50) -> Broker:
    """The broker of ``settings``: RabbitMQ's (``AmqpBroker``); the state store's own client and
    channel when both are one Redis; else clients of its own (closed by ``RedisBroker.close``)."""
    if settings.broker_is_amqp:
        return AmqpBroker(settings.broker, state_redis,
                          Scripts(state_redis, state_channel, check_slots=settings.check_slots))
    if settings.state_url == settings.broker:
        return RedisBroker(state_redis, state_channel)
    return RedisBroker(async_redis(settings.broker, max_connections=max_connections),
                  ScriptChannel.for_url(settings.broker), owns=True)
