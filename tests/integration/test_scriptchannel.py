"""Script calls (the worker's, the API's job create) on one pipelined connection
(shared/scriptchannel.py), against a real Redis and a tiny stand-in: each caller gets its own
reply, errors are redis-py's, the calls of one loop turn leave in one write, calls cut by a
lost connection are retried as redis-py retries (reconnecting, reloading the script)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import hiredis
import pytest
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ReadOnlyError, ResponseError

from deploy.devstack import Fleet, free_port, start_redis
from shared import scriptchannel
from shared.connections import async_redis, sync_redis
from shared.jobs import JobStore
from shared.scriptchannel import ChannelScript, ScriptChannel
from shared.scripts import LUA_DIR, SENT_AT_ONCE, Scripts
from shared.settings import Settings
from tests.helpers import async_wait_for
from tests.recording import FailingTransport, RecordingTransport
from tests.unit.jobstores import SPEC

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


def script(channel: ScriptChannel, source: str) -> ChannelScript:
    """A script of ``source`` on ``channel`` (redis-py's AsyncScript supplies its sha)."""
    return ChannelScript(channel, async_redis("redis://127.0.0.1:1/0").register_script(source))


def observe(url: str) -> int:
    observer = sync_redis(url)
    try:
        return observer.info("stats")["total_connections_received"]
    finally:
        observer.close()


async def on_channel(url: str, use) -> object:
    """``use(channel)`` on a new channel to ``url``, closed afterwards."""
    channel = ScriptChannel(url)
    try:
        return await use(channel)
    finally:
        await channel.close()


def test_concurrent_calls_each_get_their_own_reply_on_one_connection(redis_server):
    async def use(channel):
        echo = script(channel, ECHO)
        return await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(500)))

    before = observe(redis_server["url"])
    replies = asyncio.run(on_channel(redis_server["url"], use))
    assert replies == [[f"k{i}", str(i)] for i in range(500)]
    assert observe(redis_server["url"]) - before == 2  # one for all 500 calls, one for this look


def test_errors_are_redis_pys_and_leave_the_channel_usable(redis_server):
    async def use(channel):
        failing, echo = script(channel, "return redis.error_reply('ERR no such thing')"), script(channel, ECHO)
        with pytest.raises(ResponseError, match="no such thing") as raised:
            await failing()
        assert not isinstance(raised.value, NoScriptError)
        with pytest.raises(DataError):
            await echo(keys=["k"], args=[None])
        assert await echo(keys=["k"], args=["still here"]) == ["k", "still here"]

    asyncio.run(on_channel(redis_server["url"], use))


def test_a_flushed_script_cache_is_loaded_again(redis_server):
    async def use(channel):
        echo = script(channel, ECHO)
        assert await echo(keys=["a"], args=["1"]) == ["a", "1"]
        flusher = sync_redis(redis_server["url"])
        flusher.script_flush()
        flusher.close()
        assert await echo(keys=["b"], args=["2"]) == ["b", "2"]

    asyncio.run(on_channel(redis_server["url"], use))


SLOW = "local n = 0 for i = 1, 3000000 do n = n + i end return ARGV[1]"
# Runs until its Redis is killed while KEYS[1] exists; returns at once where it does not (the
# Redis started again on an empty data directory).
SPIN = "if redis.call('EXISTS', KEYS[1]) == 1 then while true do end end return ARGV[1]"


async def sent(channel: ScriptChannel, call) -> asyncio.Future:
    """``call()`` started, once its command went out on ``channel``'s connection."""
    protocol = channel._protocol
    recorder = protocol.transport = RecordingTransport(protocol.transport)
    future = asyncio.ensure_future(call())
    await async_wait_for(lambda: recorder.writes, interval=0, what="the call to be written")
    protocol.transport = recorder._transport
    return future


def test_a_cancelled_caller_does_not_shift_the_replies(redis_server):
    setup = sync_redis(redis_server["url"])
    setup.script_load(SLOW)  # called by its sha: it starts running as soon as it arrives
    setup.close()

    async def use(channel):
        slow, echo = script(channel, SLOW), script(channel, ECHO)
        await echo(keys=["warm"], args=["up"])
        first = await sent(channel, lambda: slow(args=["slow"]))  # its reply still to come
        first.cancel()
        replies = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(20)))
        return first, replies

    first, replies = asyncio.run(on_channel(redis_server["url"], use))
    assert first.cancelled()
    assert replies == [[f"k{i}", str(i)] for i in range(20)]


def test_calls_cut_or_made_while_redis_is_down_go_through_when_it_is_back(redis_server, monkeypatch):
    fleet, port = redis_server["fleet"], redis_server["port"]
    # Retrying for longer than by default (at least 2.1 s), whatever the time Redis takes to
    # start again on a busy machine.
    monkeypatch.setattr(scriptchannel, "RETRY_SECONDS", 60.0)
    monkeypatch.setattr(scriptchannel, "_retry", lambda: Retry(EqualJitterBackoff(cap=1.0, base=0.01), 60,
                                                               supported_errors=(RedisConnectionError,)))

    setup = sync_redis(redis_server["url"])
    setup.set("spin", 1)
    setup.script_load(SPIN)  # called by its sha: it starts running as soon as it arrives
    setup.close()

    async def use(channel):
        spin, echo = script(channel, SPIN), script(channel, ECHO)
        assert await echo(keys=["a"], args=["before"]) == ["a", "before"]
        in_flight = await sent(channel, lambda: spin(keys=["spin"], args=["x"]))  # runs until Redis dies
        await asyncio.to_thread(fleet.stop, "redis", 9)  # SIGKILL: the connection just ends
        while_down = asyncio.ensure_future(echo(keys=["a"], args=["while down"]))
        await asyncio.to_thread(start_redis, fleet, port, redis_server["dir"] / "redis2")
        # Both retried until Redis was back (as redis-py's clients retry), on a new connection,
        # with the scripts loaded again.
        assert await in_flight == "x"
        assert await while_down == ["a", "while down"]

    asyncio.run(on_channel(redis_server["url"], use))


def test_the_url_s_database_is_selected(redis_server):
    url = redis_server["url"].rsplit("/", 1)[0] + "/5"

    async def use(channel):
        return await script(channel, "redis.call('SET', KEYS[1], ARGV[1]) return 1")(keys=["where"], args=["db5"])

    assert asyncio.run(on_channel(url, use)) == 1
    db5, db0 = sync_redis(url), sync_redis(redis_server["url"])
    assert (db5.get("where"), db0.get("where")) == ("db5", None)
    db5.close()
    db0.close()


def test_scripts_go_through_their_channel_and_pipelines_through_redis_py(redis_server):
    async def use(channel):
        client = async_redis(redis_server["url"])
        try:
            scripts, plain = Scripts(client, channel), Scripts(client)
            assert isinstance(scripts.renew_lease, ChannelScript)
            assert not isinstance(plain.renew_lease, ChannelScript)
            before = observe(redis_server["url"])
            renew = {"keys": ["l", "r", "c"], "args": ["t", 1000, "1.0", "j"]}
            assert await scripts.renew_lease(**renew) == [0, 0]  # no lease held: not owned, not cancelled
            assert observe(redis_server["url"]) - before == 1 + 1  # the channel's connection, this look
            async with client.pipeline(transaction=False) as pipe:
                await scripts.renew_lease(**renew, client=pipe)
                return await pipe.execute()
        finally:
            await client.aclose()

    assert asyncio.run(on_channel(redis_server["url"], use)) == [[0, 0]]


def test_the_calls_of_one_loop_turn_go_out_in_one_write_and_publishes_at_once(redis_server):
    async def use(channel):
        client = async_redis(redis_server["url"])
        try:
            scripts = Scripts(client, channel)
            publishing = {path.stem for path in LUA_DIR.glob("[a-z]*.lua") if "PUBLISH" in path.read_text()}
            assert publishing == SENT_AT_ONCE  # every script that publishes events goes at once
            assert all(getattr(scripts, name).at_once for name in publishing) and not scripts.claim_job.at_once
            echo = script(channel, ECHO)
            assert await echo(keys=["k"], args=["loaded"]) == ["k", "loaded"]
            protocol = channel._protocol
            recorder = protocol.transport = RecordingTransport(protocol.transport)
            replies = await asyncio.gather(*(echo(keys=[f"k{i}"], args=[i]) for i in range(3)))
            [written] = recorder.writes
            assert written.count(b"EVALSHA") == 3 and replies == [[f"k{i}", str(i)] for i in range(3)]

            recorder.writes.clear()
            held = protocol.send(hiredis.pack_command(("ECHO", "held")))
            assert recorder.writes == []
            now = protocol.send(hiredis.pack_command(("ECHO", "now")), at_once=True)
            assert recorder.writes == [hiredis.pack_command(("ECHO", "held")) + hiredis.pack_command(("ECHO", "now"))]
            assert [await held, await now] == ["held", "now"]
            assert len(recorder.writes) == 1  # the turn's own flush found nothing left to write
        finally:
            await client.aclose()

    asyncio.run(on_channel(redis_server["url"], use))


def test_a_write_that_fails_ends_the_connection_and_the_next_call_reconnects(redis_server):
    async def use(channel):
        echo = script(channel, ECHO)
        assert await echo(keys=["k"], args=["first"]) == ["k", "first"]
        protocol = channel._protocol
        protocol.transport = FailingTransport(protocol.transport)
        held = protocol.send(hiredis.pack_command(("ECHO", "never sent")))
        with pytest.raises(RedisConnectionError, match="cannot write to Redis: the socket is gone"):
            await held
        assert protocol.lost is not None
        assert await echo(keys=["k"], args=["again"]) == ["k", "again"]  # on a new connection
        assert channel._protocol is not protocol

    asyncio.run(on_channel(redis_server["url"], use))


def test_only_plain_tcp_and_unix_urls_get_a_channel():
    assert isinstance(ScriptChannel.for_url("redis://h:6379/0"), ScriptChannel)
    assert isinstance(ScriptChannel.for_url("unix:///tmp/r.sock"), ScriptChannel)
    assert ScriptChannel.for_url("rediss://h:6380/0") is None


def test_a_reply_that_is_not_text_fails_only_its_caller(redis_server):
    async def use(channel):
        binary, echo = script(channel, "return string.char(255, 254)"), script(channel, ECHO)
        results = await asyncio.gather(echo(keys=["a"], args=["1"]), binary(), echo(keys=["b"], args=["2"]),
                                       return_exceptions=True)
        connection = channel._protocol
        assert await echo(keys=["c"], args=["3"]) == ["c", "3"]
        assert channel._protocol is connection  # the same connection: nothing was torn down
        return results

    first, second, third = asyncio.run(on_channel(redis_server["url"], use))
    assert (first, third) == (["a", "1"], ["b", "2"])
    assert isinstance(second, UnicodeDecodeError)


def test_error_replies_keep_redis_pys_classes(redis_server):
    async def use(channel):
        errors = []
        for reply in ("ERR plain", "READONLY You can't write against a read only replica.",
                      "NOSCRIPT No matching script"):
            try:
                await script(channel, f"return redis.error_reply({reply!r})")._run([], [])
            except Exception as exc:
                errors.append(exc)
        return errors

    plain, readonly, noscript = asyncio.run(on_channel(redis_server["url"], use))
    assert type(plain) is ResponseError and str(plain) == "plain"
    assert isinstance(readonly, ReadOnlyError)
    assert isinstance(noscript, NoScriptError)


async def resp_server(*connections):
    """Just enough of a Redis for the channel: each accepted connection runs the next of
    ``connections``, a coroutine given the stream reader and writer."""
    pending = list(connections)

    async def accept(reader, writer):
        await pending.pop(0)(reader, writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def stopped(server) -> None:
    server.close()
    await server.wait_closed()


async def answer_ones(reader, writer, after: list | None = None):
    """Answer every command with the integer 1."""
    commands = hiredis.Reader()
    while data := await reader.read(65536):
        commands.feed(data)
        while (command := commands.gets()) is not False:
            if after is not None:
                after.append(command)
            writer.write(b":1\r\n")
    writer.close()


async def hang_up_on_first_command(reader, writer):
    await reader.read(65536)
    writer.transport.abort()


def test_a_call_cut_by_a_lost_connection_is_made_once_more_on_a_new_one():
    async def go():
        server, port = await resp_server(hang_up_on_first_command, answer_ones)
        script = ChannelScript(ScriptChannel(f"redis://127.0.0.1:{port}/0"),
                               SimpleNamespace(sha="0" * 40, script="return 1"))
        try:
            return await script(keys=["k"], args=["v"])
        finally:
            await script.channel.close()
            await stopped(server)

    assert asyncio.run(go()) == 1


def test_a_connect_whose_callers_all_gave_up_is_not_handed_out_once_lost():
    async def go():
        seen: list = []
        authenticating, caller_left, connected = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def slow_auth_then_hang_up(reader, writer):
            await reader.read(65536)  # AUTH
            authenticating.set()
            await caller_left.wait()
            writer.write(b"+OK\r\n")
            await connected.wait()
            writer.transport.abort()

        server, port = await resp_server(slow_auth_then_hang_up, lambda r, w: answer_ones(r, w, seen))
        channel = ScriptChannel(f"redis://:secret@127.0.0.1:{port}/0")
        script = ChannelScript(channel, SimpleNamespace(sha="0" * 40, script="return 1"))
        first = asyncio.ensure_future(script())
        await authenticating.wait()
        first.cancel()  # the only caller leaves while AUTH is pending
        caller_left.set()
        # The connect ended (the channel holds its connection), then the server hung up on it.
        await async_wait_for(lambda: channel._protocol is not None, what="the connect to end")
        connected.set()
        await async_wait_for(lambda: channel._protocol.lost is not None, what="the hang-up to reach the channel")
        try:
            return await script(), seen
        finally:
            await channel.close()
            await stopped(server)

    result, seen = asyncio.run(go())
    assert result == 1
    assert seen[0] == [b"AUTH", b"secret"]  # a new connection, authenticated again


def test_a_create_that_never_gets_an_answer_is_tried_as_redis_py_would_then_fails_with_its_error():
    async def go():
        connections = []

        async def hang_up(reader, writer):
            connections.append(writer)
            await hang_up_on_first_command(reader, writer)

        server, port = await resp_server(*[hang_up] * 12)
        channel = ScriptChannel(f"redis://127.0.0.1:{port}/0")
        store = JobStore(async_redis(f"redis://127.0.0.1:{port}/0"), Settings(), channel)
        try:
            with pytest.raises(RedisConnectionError):  # a RedisError: the API answers 503
                await store.create(account_id="acct", model="m", queue="q", spec=SPEC)
        finally:
            await channel.close()
            await store.redis.aclose()
            await stopped(server)
        return len(connections)

    assert asyncio.run(go()) == 1 + 10  # the call, then redis-py's 10 retries
