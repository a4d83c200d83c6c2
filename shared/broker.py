"""The Celery broker, where job messages go once their job is recorded in the state store.

The fleet keeps two kinds of data: the state of jobs, accounts, limits and usage (the state
store, ``CHATFLEET_STATE_REDIS_URL``) and Celery's queues (the broker, ``CHATFLEET_REDIS_URL``:
kombu's Redis transport, a list per queue and the unacknowledged-message hash and index). They
may be one Redis (the default) or two, so that the state store can be scaled apart from the
broker. No script touches both: every script that queues a job stages its message in the job's
hash (``lua/_stage.lua``), and the caller pushes it here afterwards (made again, as script calls
are, when the connection is lost). A caller that dies in between, or whose push fails past its
retries (the API then answers 503, yet the job it recorded runs), leaves the job queued with its
message nowhere, which the reaper finds and pushes (``worker/queue/recovery.py``, within about
2.4 lease periods): nothing is lost, and a message pushed twice runs once (each attempt must
claim its job).
"""

from __future__ import annotations

from typing import Any

from shared import keys
from shared.connections import async_redis
from shared.queue import delivery_tag
from shared.scriptchannel import ScriptChannel


class Broker:
    """Pushes messages onto Celery's queues; ``redis`` (an asyncio client of the broker's Redis)
    also serves the reaper's reads of kombu's bookkeeping. Through ``channel`` where one is
    given (``shared.scriptchannel``: a push costs a fraction of redis-py's client)."""

    def __init__(self, redis, channel: ScriptChannel | None = None, owns: bool = False):
        self.redis = redis
        self.channel = channel
        self.owns = owns  # whether ``close`` closes the clients (they are not the state store's)

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


def broker_for(state_redis: Any, state_channel: ScriptChannel | None, settings, max_connections: int = 50) -> Broker:
    """The broker of ``settings``: the state store's own client and channel when both are one
    Redis, else clients of its own (closed by ``Broker.close``)."""
    if settings.state_url == settings.redis_url:
        return Broker(state_redis, state_channel)
    return Broker(async_redis(settings.redis_url, max_connections=max_connections),
                  ScriptChannel.for_url(settings.redis_url), owns=True)
