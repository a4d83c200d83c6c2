"""Celery's broker on Redis (kombu's Redis transport: a list per queue, and the
unacknowledged-message hash and index), the state store's own Redis or one of its own."""

from __future__ import annotations

from typing import Any

from shared import keys
from shared.queue import delivery_tag
from shared.scriptchannel import ScriptChannel


class RedisBroker:
    """Pushes messages onto Celery's queues; ``redis`` (an asyncio client of the broker's Redis)
    also serves the reaper's reads of kombu's bookkeeping. Through ``channel`` where one is
    given (``shared.scriptchannel``: a push costs a fraction of redis-py's client)."""

    def __init__(self, redis: Any, channel: ScriptChannel | None = None, owns: bool = False):
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
