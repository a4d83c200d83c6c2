"""Fleet-wide locks (scheduler, batch feeder) are released only by the pass that took them."""

import asyncio

import fakeredis

from shared import keys
from shared.scripts import Scripts


def test_a_lock_is_released_only_by_its_holder():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        scripts = Scripts(redis)
        # A slow pass's lock expired and another worker took it: the slow pass must not free it.
        await redis.set(keys.SCHEDULER_LOCK, "w2@host/b", px=10_000)
        refused = await scripts.release_lock(keys=[keys.SCHEDULER_LOCK], args=["w1@host/a"])
        still = await redis.get(keys.SCHEDULER_LOCK)
        released = await scripts.release_lock(keys=[keys.SCHEDULER_LOCK], args=["w2@host/b"])
        return refused, still, released, await redis.exists(keys.SCHEDULER_LOCK)

    assert asyncio.run(go()) == (0, "w2@host/b", 1, 0)
