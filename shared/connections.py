"""Redis clients: one async pool per process and per event loop, shared by everything in it.

A ``redis+cluster://host:port[,host:port...]`` URL (the state store's, ``CHATFLEET_STATE_REDIS_URL``)
gives a Redis Cluster client, which finds the cluster's other nodes from those it is given; any
other URL a client of one Redis. The fleet's keyspace (``shared/keys.py``) keeps every script's
keys, and every transaction's (``multi``), in one hash slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster

from shared.scriptchannel import TCP_OPTIONS

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# redis-py's (blocking) ClusterNode is untyped: a node by its host and port.
_sync_node = cast(Callable[[str, int], ClusterNode], ClusterNode)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` nodes a ``redis+cluster://`` URL names."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        nodes.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return nodes


def _cluster_kwargs(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.username:
        kwargs.setdefault("username", parts.username)
    if parts.password:
        kwargs.setdefault("password", parts.password)
    if parts.scheme == "rediss+cluster":
        kwargs.setdefault("ssl", True)
    return kwargs


def node_url(url: str) -> str:
    """A plain URL of the first node a cluster URL names (its pub/sub: a cluster hands every
    PUBLISH to every node, so one node's subscribers see them all)."""
    parts = urlsplit(url)
    host, port = cluster_nodes(url)[0]
    auth = parts.netloc.rpartition("@")[0]
    scheme = "rediss" if parts.scheme == "rediss+cluster" else "redis"
    return f"{scheme}://{auth + '@' if auth else ''}{host}:{port}/0"


def async_redis(url: str, **kwargs: Any) -> aioredis.Redis | AsyncRedisCluster:
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 30)
    kwargs.setdefault("socket_keepalive", True)
    # A connection that goes quiet (the API's pub/sub one, between subscriptions: its reads block
    # with no timeout, api/streams.py) is found dead within about a minute, not the kernel's two
    # hours, and its subscriptions made again.
    kwargs.setdefault("socket_keepalive_options", dict(TCP_OPTIONS))
    kwargs.setdefault("retry_on_timeout", True)
    if is_cluster_url(url):
        kwargs.pop("retry_on_timeout")
        return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster_nodes(url)],
                                 **_cluster_kwargs(url, kwargs))
    return aioredis.Redis.from_url(url, **kwargs)


def sync_redis(url: str, **kwargs: Any) -> redis.Redis | SyncRedisCluster:
    kwargs.setdefault("decode_responses", True)
    if is_cluster_url(url):
        return SyncRedisCluster(startup_nodes=[_sync_node(h, p) for h, p in cluster_nodes(url)],
                                **_cluster_kwargs(url, kwargs))
    return redis.Redis.from_url(url, **kwargs)


def multi(client: aioredis.Redis | AsyncRedisCluster | redis.Redis | SyncRedisCluster) -> Any:
    """A pipeline for writes that go together: a MULTI transaction on one Redis; on a cluster,
    where a transaction must stay in one slot, the same writes in order (each caller orders
    them so that a crash between two leaves nothing a reader trips on). Any: the client's own
    kind of pipeline (asyncio or blocking), which its caller knows."""
    return client.pipeline(transaction=not isinstance(client, (AsyncRedisCluster, SyncRedisCluster)))


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = sync_redis(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False
