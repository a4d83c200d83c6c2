"""The worker's HTTP/1.1 transport (worker/providers/h1.py) and its sockets
(worker/providers/netio.py) against HTTP servers on loopback: TLS, connection reuse, a server
closing an idle connection, flow control on a large body, a connection broken mid-answer,
timeouts, the framings of an answer's body, and the pool's bounds. Run under uvloop, as the
worker runs it, and under asyncio's own loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time

import httpcore
import httpx
import pytest
import trustme
import uvloop

from tests.helpers import DEADLINE, async_wait_for
from tests.recording import FailingTransport, RecordingTransport
from worker.providers.h1 import H1Transport
from worker.providers.netio import HELD_MAX, HIGH_WATER, AsyncioBackend, AsyncioStream

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=list(LOOPS))
def run(request):
    def go(coro):
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    return go


class Server:
    """A tiny HTTP/1.1 server: ``handler(reader, writer, request_line)`` answers each request;
    counts the connections it accepted."""

    def __init__(self, handler, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        scheme, host = ("https", "localhost") if self.ssl_context else ("http", "127.0.0.1")
        self.url = f"{scheme}://{host}:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.tasks.add(asyncio.current_task())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if await self.handler(reader, writer, head.split(b"\r\n", 1)[0]) is False:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: a certificate for localhost from a throwaway CA the client trusts."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


def sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def sse_answer(reader, writer, line) -> None:
    writer.write(sse_head())
    for i in range(3):
        writer.write(chunk(b"data: %d\n\n" % i))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def post(client: httpx.AsyncClient, url: str) -> tuple[bytes, httpx.Response]:
    async with client.stream("POST", url + "/v1/chat", json={"x": 1}) as response:
        body = b"".join([part async for part in response.aiter_raw()])
    return body, response


def test_tls_answers_stream_and_one_connection_serves_consecutive_calls(run):
    server_context, client_context = tls_contexts()

    async def go():
        async with Server(sse_answer, server_context) as server:
            transport = H1Transport(httpx.Limits(max_connections=4), ssl_context=client_context)
            async with httpx.AsyncClient(transport=transport) as client:
                bodies = []
                for _ in range(3):
                    body, response = await post(client, server.url)
                    bodies.append(body)
                    stream = response.extensions["network_stream"]
                assert isinstance(stream, AsyncioStream)
                assert stream.get_extra_info("ssl_object").version().startswith("TLS")
                # A certificate for another name is refused.
                with pytest.raises(httpx.ConnectError):
                    await client.post(server.url.replace("localhost", "127.0.0.1") + "/v1/chat", json={})
            return bodies, server.connections

    bodies, connections = run(go())
    assert bodies == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n"] * 3
    assert connections == 1  # three calls on one connection (a refused handshake never reaches the handler)


def test_a_connection_the_server_closed_while_idle_is_not_reused(run):
    async def go():
        answered = asyncio.Event()  # the client has its answer: the connection is idle

        async def answer_then_hang_up(reader, writer, line):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await answered.wait()
            return False  # closes the connection, without having said so

        async with Server(answer_then_hang_up) as server:
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits())) as client:
                first = await client.get(server.url)
                answered.set()
                stream = first.extensions["network_stream"]
                await async_wait_for(lambda: stream._protocol.eof, what="the server's hang-up to reach the client")
                second = await client.get(server.url)
            return first.text, second.text, server.connections

    assert run(go()) == ("ok", "ok", 2)


def test_a_large_body_read_slowly_arrives_whole(run):
    body = bytes(range(256)) * (4 * HIGH_WATER // 256)  # four times the buffer's high-water mark

    async def big(reader, writer, line):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()

    async def go():
        async with Server(big) as server:
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits())) as client:
                async with client.stream("GET", server.url) as response:
                    stream = response.extensions["network_stream"]
                    # The server sends it all meanwhile; nobody reads it yet.
                    paused = await async_wait_for(lambda: stream._protocol.read_paused,
                                                  what="the socket's reading to pause")
                    parts = [part async for part in response.aiter_raw()]
                    resumed = not stream._protocol.read_paused
        return b"".join(parts), paused, resumed

    received, paused, resumed = run(go())
    assert received == body
    assert paused and resumed  # the socket was not read while nobody took the buffer


def test_a_connection_broken_mid_answer_raises_a_transport_error(run):
    async def break_off(reader, writer, line):
        writer.write(sse_head() + chunk(b"data: 0\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        writer.transport.abort()
        return False

    async def go():
        async with Server(break_off) as server:
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits())) as client:
                received = []
                with pytest.raises(httpx.TransportError) as caught:
                    async with client.stream("POST", server.url, json={}) as response:
                        async for part in response.aiter_raw():
                            received.append(part)
                return received, caught.value

    received, error = run(go())
    assert b"".join(received) == b"data: 0\n\n"
    assert isinstance(error, httpx.ReadError), repr(error)  # a reset, not a clean end of the body


def test_a_tls_stream_closed_early_is_closed_at_once(run):
    # A TLS transport's close() waits for the peer's close_notify (uvloop: up to 30 s), which a
    # provider busy sending never reads: a cancelled job would leave the provider generating.
    # The provider (here a blocking TLS server that only sends) must see the connection end.
    server_context, client_context = tls_contexts()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ended, stop = threading.Event(), threading.Event()

    def provider() -> None:
        conn, _ = listener.accept()
        with server_context.wrap_socket(conn, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            tls.sendall(sse_head())
            try:
                while not stop.is_set():
                    tls.sendall(chunk(b"data: more\n\n"))
                    time.sleep(0.01)
            except OSError:
                ended.set()

    thread = threading.Thread(target=provider, daemon=True)
    thread.start()

    async def go():
        transport = H1Transport(httpx.Limits(), ssl_context=client_context)
        async with httpx.AsyncClient(transport=transport) as client:
            async with client.stream("POST", f"https://localhost:{port}/v1/chat", json={}) as response:
                async for _ in response.aiter_raw():
                    break  # the job was cancelled: the stream closes after its first chunk
            # A few turns of the loop for the close to take effect, then the loop is held: a
            # close waiting for the peer's close_notify (or the timer that gives up on it)
            # cannot end the connection now; only one already ended lets the provider see it.
            for _ in range(10):
                await asyncio.sleep(0)
            return ended.wait(DEADLINE)

    try:
        assert run(go()), "the provider still sends on a stream the client closed"
    finally:
        stop.set()
        listener.close()


def test_a_kernel_connect_timeout_is_a_connect_error_whatever_the_timeout(run):
    # ETIMEDOUT from the kernel is a TimeoutError (an OSError) without our deadline expiring.
    import worker.providers.netio as netio

    async def refuse(*args, **kwargs):
        raise TimeoutError(110, "Connection timed out")

    async def go():
        loop = asyncio.get_running_loop()
        loop.create_connection = refuse
        backend = netio.AsyncioBackend()
        errors = []
        for timeout in (None, 10.0):
            try:
                await backend.connect_tcp("192.0.2.1", 443, timeout=timeout)
            except Exception as exc:
                errors.append(exc)
        return errors

    errors = run(go())
    assert [type(e).__name__ for e in errors] == ["ConnectError", "ConnectError"], errors
    assert "timed out" in str(errors[0])


def test_read_timeout_and_refused_connection_map_to_httpx_errors(run):
    async def stall(reader, writer, line):
        writer.write(sse_head() + chunk(b"data: 0\n\n"))
        await writer.drain()
        await asyncio.Event().wait()  # nothing more, ever

    async def go():
        async with Server(stall) as server:
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits()),
                                         timeout=httpx.Timeout(5, read=0.2)) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(server.url, json={})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connections are refused
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits())) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/")

    run(go())


def test_a_request_s_head_and_body_go_out_in_one_write(run, monkeypatch):
    recorders: list[RecordingTransport] = []
    wrap = AsyncioStream.__init__

    def recording(self, transport, protocol):
        recorders.append(RecordingTransport(transport))
        wrap(self, recorders[-1], protocol)

    monkeypatch.setattr(AsyncioStream, "__init__", recording)

    async def go():
        async with Server(sse_answer) as server:
            async with httpx.AsyncClient(transport=H1Transport(httpx.Limits())) as client:
                return await post(client, server.url)

    body, response = run(go())
    assert response.status_code == 200 and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    [recorder] = recorders
    [written] = recorder.writes
    assert written.startswith(b"POST /v1/chat HTTP/1.1\r\n") and written.endswith(b'\r\n\r\n{"x":1}')


def test_held_writes_go_first_when_the_transport_is_full_and_large_ones_at_once(run):
    large = b"x" * (HELD_MAX + 1)
    expected = b"held then this" + large

    async def go():
        arrived = asyncio.get_running_loop().create_future()

        async def collect(reader, writer):
            arrived.set_result(await reader.readexactly(len(expected)))
            writer.close()

        server = await asyncio.start_server(collect, "127.0.0.1", 0)
        try:
            stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
            recorder = stream._transport = RecordingTransport(stream._transport)

            async def held_then_paused():
                await stream.write(b"held ")  # held to the end of the loop turn
                stream._protocol.pause_writing()  # as if the transport's buffer were over its high mark
                await stream.write(b"then this")  # the held bytes go first, then this; then it waits

            writing = asyncio.ensure_future(held_then_paused())
            await asyncio.sleep(0)
            assert recorder.writes == [b"held ", b"then this"] and not writing.done()
            stream._protocol.resume_writing()
            await asyncio.wait_for(writing, DEADLINE)
            await stream.write(large)
            assert recorder.writes[2:] == [large]  # more than is ever held: written at once
            data = await asyncio.wait_for(arrived, DEADLINE)
            await stream.aclose()
            return data
        finally:
            server.close()

    assert run(go()) == expected


def test_a_held_write_that_fails_fails_the_next_write(run):
    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.sockets[0].getsockname()[1])
            stream._transport = FailingTransport(stream._transport)
            await stream.write(b"held ")  # held: its failure comes when it is flushed
            stream._protocol.pause_writing()
            with pytest.raises(httpcore.WriteError, match="the socket is gone"):
                await stream.write(b"then this")
            with pytest.raises(httpcore.ReadError, match="the socket is gone"):
                await stream.read(100)
        finally:
            server.close()

    run(go())


def canned(*answers: bytes):
    """A handler that writes the next of ``answers`` to each request, as it is; None: hang up."""
    queue = list(answers)

    async def handler(reader, writer, line):
        answer = queue.pop(0)
        if answer is None:
            return False
        writer.write(answer)
        await writer.drain()
        return None

    return handler


async def direct_stream(transport: H1Transport, url: str, **headers: str) -> tuple[int, bytes]:
    from worker.providers.transport import ProviderClient

    client = ProviderClient(direct=transport, timeout=httpx.Timeout(5.0))  # closing it would close the transport
    request = client.build_request("POST", url, content=b"{}", headers=headers)
    response = await client.send(request, stream=True)
    try:
        return response.status_code, b"".join([part async for part in response.aiter_raw()])
    finally:
        await response.aclose()


def test_chunked_answers_are_unframed_and_the_connection_kept(run):
    answer = sse_head() + chunk(b"data: a\n\n") + chunk(b"data: b\n\n") + b"0\r\n\r\n"

    async def go():
        async with Server(canned(answer, answer)) as server:
            transport = H1Transport(httpx.Limits())
            first = await direct_stream(transport, server.url)
            second = await direct_stream(transport, server.url)
            idle = transport.idle
            await transport.aclose()
            return first, second, server.connections, idle

    assert run(go()) == ((200, b"data: a\n\ndata: b\n\n"),) * 2 + (1, 1)


def test_a_body_that_ends_with_the_connection_is_whole_and_the_connection_not_kept(run):
    until_eof = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: x\n\n"

    async def hang_up_after(reader, writer, line):
        writer.write(until_eof)
        await writer.drain()
        return False

    async def go():
        async with Server(hang_up_after) as server:
            transport = H1Transport(httpx.Limits())
            answers = [await direct_stream(transport, server.url) for _ in range(2)]
            return answers, server.connections, transport.open

    assert run(go()) == ([(200, b"data: x\n\n")] * 2, 2, 0)


def test_connection_close_an_interim_answer_and_bytes_after_the_answer(run):
    close = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nyoHTTP/1.1 200 OK\r\n"

    async def go():
        results = []
        for answer in (close, interim, extra):
            async with Server(canned(answer, answer)) as server:
                transport = H1Transport(httpx.Limits())
                for _ in range(2):
                    results.append(await direct_stream(transport, server.url))
                results.append(server.connections)
                await transport.aclose()
        return results

    assert run(go()) == [(200, b"ok"), (200, b"ok"), 2,  # "connection: close": a new one each time
                         (200, b"hi"), (200, b"hi"), 1,  # the 100 is passed over, the connection kept
                         (200, b"yo"), (200, b"yo"), 2]  # bytes nobody asked for: not reused


def test_a_cut_chunked_body_and_an_answer_that_is_not_http_are_transport_errors(run):
    cut = sse_head() + chunk(b"data: a\n\n")

    async def cut_then_hang_up(reader, writer, line):
        writer.write(cut)
        await writer.drain()
        return False

    async def go():
        errors = []
        for handler in (cut_then_hang_up, canned(b"SPDY/9 700 What\r\n\r\n")):
            async with Server(handler) as server:
                transport = H1Transport(httpx.Limits())
                try:
                    await direct_stream(transport, server.url)
                except httpx.TransportError as exc:
                    errors.append(type(exc))
                errors.append(transport.open)
        return errors

    assert run(go()) == [httpx.RemoteProtocolError, 0, httpx.RemoteProtocolError, 0]


def test_a_header_that_is_not_http_is_refused_unsent_without_its_value(run):
    async def go():
        async with Server(canned(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")) as server:
            transport = H1Transport(httpx.Limits())
            try:
                await direct_stream(transport, server.url, authorization="Bearer sk-secret\r\nx-evil: 1")
            except httpx.LocalProtocolError as exc:
                return str(exc), server.connections, transport.open
        return None

    message, connections, open_ = run(go())
    assert "authorization" in message and "sk-secret" not in message
    assert (connections, open_) == (0, 0)


def test_the_pool_bounds_open_connections_and_idle_ones_expire(run):
    async def slow(reader, writer, line):
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async def go():
        async with Server(slow) as server:
            transport = H1Transport(httpx.Limits(max_connections=2, keepalive_expiry=0.2))
            started = time.monotonic()
            answers = await asyncio.gather(*(direct_stream(transport, server.url) for _ in range(4)))
            took = time.monotonic() - started
            peak_connections = server.connections
            await asyncio.sleep(0.3)  # the two idle connections expire
            await direct_stream(transport, server.url)
            after_expiry = server.connections
            transport_open = transport.open
            await transport.aclose()

            tight = H1Transport(httpx.Limits(max_connections=1))
            async with provider_client(tight, pool=0.1) as client:
                request = client.build_request("POST", server.url, content=b"{}")
                held = await client.send(request, stream=True)
                try:
                    await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
                    timed_out = False
                except httpx.PoolTimeout:
                    timed_out = True
                await held.aread()
                await held.aclose()
        return answers, took, peak_connections, after_expiry, transport_open, timed_out

    answers, took, peak, after_expiry, open_, timed_out = run(go())
    assert answers == [(200, b"ok")] * 4
    assert peak == 2 and took >= 0.55  # two at a time: two rounds of 0.3 s
    assert after_expiry == 3 and open_ == 1  # the expired ones were not reused
    assert timed_out


def provider_client(transport: H1Transport, pool: float):
    from worker.providers.transport import ProviderClient

    return ProviderClient(direct=transport, timeout=httpx.Timeout(5.0, pool=pool))


def test_a_waiter_woken_then_cancelled_passes_its_place_on(run):
    async def go():
        async with Server(canned(*[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"] * 3)) as server:
            transport = H1Transport(httpx.Limits(max_connections=1))
            client = provider_client(transport, pool=5.0)
            held = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            second = asyncio.ensure_future(client.send(client.build_request("POST", server.url, content=b"{}"),
                                                       stream=True))
            third = asyncio.ensure_future(client.send(client.build_request("POST", server.url, content=b"{}"),
                                                      stream=True))
            await asyncio.sleep(0.05)  # both wait for the one connection
            await held.aread()
            await held.aclose()  # wakes the second...
            second.cancel()  # ...which is gone before it takes the place
            response = await asyncio.wait_for(third, 2.0)
            body = await response.aread()
            await response.aclose()
            return second.cancelled(), body, transport.open

    assert run(go()) == (True, b"ok", 1)


def test_bytes_after_a_whole_answer_in_the_same_read_leave_the_answer_whole(run):
    answers = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiXYZ",
               b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi!"]

    async def go():
        results = []
        for answer in answers:
            async with Server(canned(answer)) as server:
                transport = H1Transport(httpx.Limits())
                results.append(await direct_stream(transport, server.url))
                results.append(transport.open)  # not kept
        return results

    assert run(go()) == [(200, b"hi"), 0, (200, b"hi"), 0]


def test_header_values_as_h11_has_them(run):
    async def go():
        async with Server(canned(b"HTTP/1.1 200 OK\r\nx-padded: a b  \r\ncontent-length: 0\r\n\r\n")) as server:
            transport = H1Transport(httpx.Limits())
            client = provider_client(transport, pool=1.0)
            response = await client.send(client.build_request("POST", server.url, content=b"{}"), stream=True)
            await response.aclose()
            refused = []
            for value in (" leading", "trailing ", "a\x01control"):
                try:
                    await client.send(client.build_request("POST", server.url, content=b"{}",
                                                           headers={"x-api-key": value}), stream=True)
                except httpx.LocalProtocolError:
                    refused.append(value)
            return response.headers["x-padded"], refused

    assert run(go()) == ("a b", [" leading", "trailing ", "a\x01control"])
