"""kombu's Redis transport, with one Redis client per channel instead of one per operation.

kombu builds a new ``redis.Redis`` object for every operation it does outside its polling
connection: each message given back, each event published, each control reply.
Building one costs more than the commands it then sends (redis-py fills a dict of response
callbacks per client): without this transport, a provider worker spends 10-20 % more CPU per
job and the fleet does 14-30 % fewer jobs per second (bench/README.md, "Private hooks").
A ``redis.Redis`` is safe to share between threads (each command borrows a connection from
the pool), so the channel keeps one and hands it out; everything else is kombu's. The client
is built by kombu's own ``_create_client`` (private: the one hook of kombu here, checked at
import; a kombu without it gets its own transport back).

Selected with ``broker_transport`` in ``worker/celery_app.py``; the broker URL stays ``redis://``.
"""

from __future__ import annotations

import contextlib
import threading

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    _client_lock = threading.Lock()
    _shared: tuple[object, object] | None = None  # (pool, client built on it)

    @contextlib.contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        try:
            pool = self.pool
        except AttributeError as exc:
            # kombu builds a pool from its connection, which is gone once Redis dropped it (a
            # restart): it then fails with an AttributeError that Celery takes for a bug and stops
            # the worker on, where a lost connection is what it is, and is recovered from.
            raise RedisConnectionError("the connection to the broker is closed") from exc
        shared = self._shared
        if shared is None or shared[0] is not pool:  # first use, or kombu replaced its pool
            with self._client_lock:
                shared = self._shared
                if shared is None or shared[0] is not pool:
                    shared = self._shared = (pool, self._create_client())
        yield shared[1]


class Transport(kombu_redis.Transport):
    Channel = Channel if hasattr(kombu_redis.Channel, "_create_client") else kombu_redis.Channel
