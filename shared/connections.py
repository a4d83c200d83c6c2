"""Redis clients: one async pool per process and per event loop, shared by everything in it."""

from __future__ import annotations

from functools import cache

import redis
import redis.asyncio as aioredis

try:
    import hiredis
except ImportError:  # pragma: no cover - a dependency (redis[hiredis]); redis-py works without it
    hiredis = None


class HiredisPacking:
    """Commands packed by hiredis, in C, on a redis-py asyncio connection.

    redis-py's asyncio connections pack every command in Python (its sync ones use hiredis when
    it is installed), ~1 µs per argument. A worker publishes the tokens of all its streams in
    one EVALSHA of nine arguments per job and token: packing was 8-11 µs of a relayed token's
    ~100, against 2.6-2.9 with hiredis. What hiredis refuses (None, a bool) goes to redis-py,
    which raises its usual ``DataError``; so does a command name of several words ("SCRIPT
    LOAD"), which redis-py splits. hiredis encodes text as strict UTF-8: only clients with
    redis-py's default encoding get this class.
    """

    def pack_command(self, *args):
        first = args[0]
        if not (isinstance(first, str | bytes) and len(first.split()) > 1):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


@cache
def _packing(connection_class: type) -> type:
    return type(connection_class.__name__, (HiredisPacking, connection_class), {})


def async_redis(url: str, **kwargs) -> aioredis.Redis:
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 30)
    kwargs.setdefault("socket_keepalive", True)
    kwargs.setdefault("retry_on_timeout", True)
    client = aioredis.Redis.from_url(url, **kwargs)
    pool = client.connection_pool
    if hiredis is not None and kwargs.get("encoding", "utf-8") == "utf-8" and \
            kwargs.get("encoding_errors", "strict") == "strict":
        # The class the URL chose (TCP, TLS, Unix socket), packing with hiredis.
        pool.connection_class = _packing(pool.connection_class)
    return client


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
