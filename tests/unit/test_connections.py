"""Async Redis clients pack commands with hiredis (shared/connections.py), byte for byte as
redis-py would, on whatever connection class the URL chose. Every integration test runs its
Redis traffic through them."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from shared.connections import HiredisPacking, async_redis

ARGUMENTS = [
    ("EVALSHA", "a" * 40, 2, "chatfleet:job:1:events", "chatfleet:job:1:live", 10_000, 86_400),
    ("SET", "k", "é ü 漢字 \U0001f600", "PX", 1500),
    ("SET", b"bytes", memoryview(b"view"), -3, 0, 2**70),
    ("ZADD", "z", 0.1, "a", 1.5, "b", -2.25e-7, "c", 1e20, "d"),
    ("XADD", "s", "0-12", "t", "token", "d", "x" * 100_000),  # beyond redis-py's buffer cutoff
    ("PING",),
]


@pytest.mark.parametrize("args", ARGUMENTS, ids=[a[0] + str(i) for i, a in enumerate(ARGUMENTS)])
def test_packs_the_bytes_redis_py_packs(args):
    ours = async_redis("redis://127.0.0.1:1/0").connection_pool.make_connection()
    theirs = Connection()
    assert isinstance(ours, HiredisPacking)
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    assert b"".join(ours.pack_commands([args, args])) == b"".join(theirs.pack_commands([args, args]))


def test_what_hiredis_refuses_gets_redis_pys_error_and_a_spaced_name_is_split():
    ours = async_redis("redis://127.0.0.1:1/0").connection_pool.make_connection()
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)
    assert b"".join(ours.pack_command("SCRIPT LOAD", "return 1")) == b"".join(
        Connection().pack_command("SCRIPT", "LOAD", "return 1"))


@pytest.mark.parametrize("url, base", [
    ("redis://127.0.0.1:6379/0", Connection),
    ("rediss://127.0.0.1:6380/0", SSLConnection),
    ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
])
def test_the_url_still_chooses_the_connection(url, base):
    cls = async_redis(url).connection_pool.connection_class
    assert issubclass(cls, HiredisPacking) and issubclass(cls, base)
    assert async_redis(url).connection_pool.connection_class is cls  # one class per kind


def test_a_command_name_of_several_words_is_split_as_redis_py_splits_it():
    ours = async_redis("redis://127.0.0.1:1/0").connection_pool.make_connection()
    for name in ("SCRIPT LOAD", b"SCRIPT LOAD", "SCRIPT\tLOAD"):
        assert b"".join(ours.pack_command(name, "return 1")) == b"".join(Connection().pack_command(name, "return 1"))


def test_a_client_with_another_encoding_packs_as_redis_py_does():
    client = async_redis("redis://127.0.0.1:1/0", encoding="latin-1")
    assert not issubclass(client.connection_pool.connection_class, HiredisPacking)
    assert not issubclass(async_redis("redis://127.0.0.1:1/0", encoding_errors="replace")
                          .connection_pool.connection_class, HiredisPacking)
