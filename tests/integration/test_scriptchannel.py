"""The worker's script calls on one pipelined connection (shared/scriptchannel.py), against a
real Redis: each caller gets its own reply, errors are redis-py's, a lost connection fails the
calls in flight and the next call reconnects (and reloads the script)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

from deploy.devstack import Fleet, free_port, start_redis
from shared.connections import async_redis, sync_redis
from shared.scriptchannel import ChannelScript, ScriptChannel, channel_for, use_channel
from shared.scripts import Scripts

pytestmark = pytest.mark.integration

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def redis_server(tmp_path):
    fleet = Fleet()
    port = free_port()
    url = start_redis(fleet, port, tmp_path / "redis", tmp_path / "log")
    server = {"fleet": fleet, "port": port, "url": url, "dir": tmp_path}
    yield server
    fleet.stop_all()


def channel_script(url: str, source: str) -> ChannelScript:
    client = async_redis(url)
    return ChannelScript(use_channel(client, url), client.register_script(source))


def test_concurrent_calls_each_get_their_own_reply_on_one_connection(redis_server):
    async def go():
        echo = channel_script(redis_server["url"], ECHO)
        replies = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(500)))
        await echo.channel.close()
        return replies

    observer = sync_redis(redis_server["url"])
    before = observer.info("stats")["total_connections_received"]
    replies = asyncio.run(go())
    assert replies == [[f"k{i}", str(i)] for i in range(500)]
    assert observer.info("stats")["total_connections_received"] - before == 1  # one for all 500 calls


def test_errors_are_redis_pys_and_leave_the_channel_usable(redis_server):
    async def go():
        client = async_redis(redis_server["url"])
        channel = use_channel(client, redis_server["url"])
        failing = ChannelScript(channel, client.register_script("return redis.error_reply('ERR no such thing')"))
        echo = ChannelScript(channel, client.register_script(ECHO))
        with pytest.raises(ResponseError, match="no such thing") as raised:
            await failing()
        assert not isinstance(raised.value, NoScriptError)
        with pytest.raises(DataError):
            await echo(keys=["k"], args=[None])
        assert await echo(keys=["k"], args=["still here"]) == ["k", "still here"]
        await channel.close()

    asyncio.run(go())


def test_a_flushed_script_cache_is_loaded_again(redis_server):
    async def go():
        echo = channel_script(redis_server["url"], ECHO)
        assert await echo(keys=["a"], args=["1"]) == ["a", "1"]
        sync_redis(redis_server["url"]).script_flush()
        assert await echo(keys=["b"], args=["2"]) == ["b", "2"]
        await echo.channel.close()

    asyncio.run(go())


def test_a_cancelled_caller_does_not_shift_the_replies(redis_server):
    async def go():
        client = async_redis(redis_server["url"])
        channel = use_channel(client, redis_server["url"])
        slow = ChannelScript(channel, client.register_script(
            "local n = 0 for i = 1, 3000000 do n = n + i end return ARGV[1]"))
        echo = ChannelScript(channel, client.register_script(ECHO))
        await echo(keys=["warm"], args=["up"])
        first = asyncio.ensure_future(slow(args=["slow"]))
        await asyncio.sleep(0.005)  # sent, still running in Redis
        first.cancel()
        replies = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(20)))
        await channel.close()
        return first, replies

    first, replies = asyncio.run(go())
    assert first.cancelled()
    assert replies == [[f"k{i}", str(i)] for i in range(20)]


def test_calls_in_flight_fail_when_redis_goes_and_the_next_call_reconnects(redis_server):
    fleet, port = redis_server["fleet"], redis_server["port"]

    async def go():
        client = async_redis(redis_server["url"])
        channel = use_channel(client, redis_server["url"])
        slow = ChannelScript(channel, client.register_script(
            "local n = 0 for i = 1, 3000000 do n = n + i end return ARGV[1]"))
        echo = ChannelScript(channel, client.register_script(ECHO))
        assert await echo(keys=["a"], args=["before"]) == ["a", "before"]
        in_flight = asyncio.ensure_future(slow(args=["x"]))
        await asyncio.sleep(0.005)
        await asyncio.to_thread(fleet.stop, "redis", 9)  # SIGKILL: the connection just ends
        with pytest.raises(RedisConnectionError):
            await in_flight
        with pytest.raises(RedisConnectionError):
            await echo(keys=["a"], args=["while down"])
        await asyncio.to_thread(start_redis, fleet, port, redis_server["dir"] / "redis2")
        assert await echo(keys=["a"], args=["after"]) == ["a", "after"]  # reconnected, reloaded
        await channel.close()

    asyncio.run(go())


def test_the_url_s_database_is_selected(redis_server):
    url = redis_server["url"].rsplit("/", 1)[0] + "/5"

    async def go():
        setter = channel_script(url, "redis.call('SET', KEYS[1], ARGV[1]) return 1")
        assert await setter(keys=["where"], args=["db5"]) == 1
        await setter.channel.close()

    asyncio.run(go())
    assert sync_redis(url).get("where") == "db5"
    assert sync_redis(redis_server["url"]).get("where") is None


def test_scripts_use_the_channel_of_their_client_and_pipelines_keep_redis_py(redis_server):
    async def go():
        client = async_redis(redis_server["url"])
        plain = Scripts(async_redis(redis_server["url"]))
        channel = use_channel(client, redis_server["url"])
        scripts = Scripts(client)
        assert channel_for(client) is channel
        assert isinstance(scripts.renew_lease, ChannelScript)
        assert not isinstance(plain.renew_lease, ChannelScript)
        async with client.pipeline(transaction=False) as pipe:
            await scripts.renew_lease(keys=["l", "r", "c"], args=["t", 1000, "1.0", "j"], client=pipe)
            (owned_and_cancel,) = await pipe.execute()
        await channel.close()
        return owned_and_cancel

    assert asyncio.run(go()) == [0, 0]  # no lease held: not owned, not cancelled


def test_only_plain_tcp_and_unix_urls_get_a_channel():
    assert ScriptChannel.supports("redis://h:6379/0") and ScriptChannel.supports("unix:///tmp/r.sock")
    assert not ScriptChannel.supports("rediss://h:6380/0")
    assert use_channel(async_redis("rediss://h:6380/0"), "rediss://h:6380/0") is None
