"""Redis clients: one async pool per process and per event loop, shared by everything in it."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis


def async_redis(url: str, **kwargs) -> aioredis.Redis:
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 30)
    kwargs.setdefault("socket_keepalive", True)
    kwargs.setdefault("retry_on_timeout", True)
    return aioredis.Redis.from_url(url, **kwargs)


def sync_redis(url: str, **kwargs) -> redis.Redis:
    kwargs.setdefault("decode_responses", True)
    return redis.Redis.from_url(url, **kwargs)


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = sync_redis(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False
