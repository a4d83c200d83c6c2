"""The fake LLM provider's app: one asyncio process speaking several providers' wire formats.

This module takes a request from the socket to its answer: it finds the family (routes.py),
records the request, checks auth and the body through the family, takes the next scripted
behaviour, then answers on schedule, streamed or not, or fails as scripted. Each family's wire
format is in its own module over family.py; the control API is control.py. See README.md.

The app is a bare ASGI callable (no framework on the hot path) served by uvicorn with a
protocol subclass that remembers each connection's transport (connections.py), so a scripted
fault can drop the connection abruptly (``cut_after``) even before a response has started. All
timing is done with ``asyncio`` sleeps on absolute deadlines; one process holds thousands of
streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from .asgi import Receive, Scope, Send, query_of, read_body, send_json, wait_disconnect
from .connections import QuietDrop, drop, tracking_protocol_class, transport_of
from .control import control
from .family import ApiError, Family, Req, dumps
from .generation import Plan, build_plan
from .knobs import KNOB_KEYS, error_message
from .routes import route
from .state import State
from .tools import shape

BATCH = 256  # max events coalesced into one write when behind schedule


class FakeProviderApp:
    def __init__(self, state: State):
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_fake/") or path == "/_fake":
            await control(self.state, scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            key = k.decode("latin-1")
            val = v.decode("latin-1")
            headers[key] = headers[key] + ", " + val if key in headers else val
        found = route(scope["method"], path, scope.get("raw_path") or path.encode(), headers)
        if found is None:
            await read_body(receive)
            await send_json(
                send, 404, dumps({"error": {"message": f"Unknown request URL: {scope['method']} {path}",
                                            "type": "invalid_request_error", "code": "unknown_url"}})
            )
            return
        if scope["method"] != "POST":
            await read_body(receive)
            await send_json(send, 405, dumps({"error": {"message": "Method not allowed",
                                                        "type": "invalid_request_error", "code": None}}))
            return
        st = self.state
        st.active += 1
        st.total += 1
        st.peak_active = max(st.peak_active, st.active)
        try:
            await self.provider(scope, receive, send, found[0], found[1], headers)
        finally:
            st.active -= 1

    # ----------------------------------------------------------------------------------
    async def provider(
        self, scope: Scope, receive: Receive, send: Send, fam: Family, params: dict[str, str], headers: dict[str, str]
    ) -> None:
        st = self.state
        t0 = time.monotonic()
        raw = await read_body(receive)
        if raw is None:
            return
        query = query_of(scope)
        path = scope["path"]
        try:
            body: Any = orjson.loads(raw) if raw else None
            body_ok = True
        except orjson.JSONDecodeError:
            body, body_ok = raw.decode("utf-8", "replace"), False
        rec: dict[str, Any] = {
            "id": next(st.ids),
            "time": time.time(),
            "family": fam.name,
            "method": scope["method"],
            "path": path,
            "query": query,
            "headers": headers,
            "body": body if st.config["record_bodies"] else None,
            "stream": None,
            "status": None,
            "behaviour": None,
            # The caller's address: the same one on two requests means a reused connection.
            "client": "{}:{}".format(*scope["client"]) if scope.get("client") else None,
        }
        st.record(rec)

        error_fields: dict[str, Any] = {}  # a scripted behaviour's extra fields of its error object

        async def fail(e: ApiError, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
            etype = e.etype if e.etype and e.etype != "auth" else fam.error_type(e.status)
            hdrs = fam.error_headers(e.status, etype) + list(extra)
            rec["status"] = e.status
            body = fam.error_body(e.status, e.message, etype)
            if error_fields:
                data = orjson.loads(body)
                target = data["error"] if isinstance(data.get("error"), dict) else data
                target.update(error_fields)
                body = orjson.dumps(data)
            await send_json(send, e.status, body, hdrs)

        auth_err = fam.check_auth(headers, query, st.config["api_key"])
        if auth_err is not None:
            await fail(auth_err)
            return
        if not body_ok:
            await fail(fam.bad_request("Invalid JSON in request body."))
            return
        try:
            req = fam.parse(body, params, query, headers)
        except ApiError as e:
            await fail(e)
            return
        rec["stream"] = req.stream
        beh = st.take_behaviour(fam.name, path, req.stream) or {}
        if beh:
            rec["behaviour"] = {k: v for k, v in beh.items() if k != "times"}
            error_fields.update(beh.get("error_fields") or {})
        knobs = st.config
        if any(k in beh for k in KNOB_KEYS):
            knobs = dict(knobs)
            knobs.update({k: beh[k] for k in KNOB_KEYS if k in beh})
        extra_headers = [(k.lower().encode(), str(v).encode()) for k, v in (beh.get("headers") or {}).items()]

        if beh.get("delay_ms"):
            await asyncio.sleep(beh["delay_ms"] / 1000)
        if beh.get("hang"):
            rec["status"] = "hang"
            await wait_disconnect(receive)
            return
        status = beh.get("status")
        if status is not None and beh.get("error_after") is None:
            msg = error_message(beh, status)
            extra = list(extra_headers)
            if beh.get("retry_after") is not None:
                extra.append((b"retry-after", str(beh["retry_after"]).encode()))
            await fail(ApiError(status, msg, beh.get("error_type")), extra)
            return

        req.id = fam.new_id()
        req.created = int(time.time())
        req.t0 = t0
        plan = shape(build_plan(knobs, req.limit, req.stops, req.last_user, fam.prefill(body)), req.tools,
                     fam.new_call_id())
        ttft = float(knobs.get("ttft_ms") or 0) / 1000
        rate = float(knobs.get("tokens_per_s") or 0)
        if not req.stream:
            n = len(plan.deltas)
            total = ttft + ((n - 1) / rate if rate and n > 1 else 0)
            if beh.get("cut_after") is not None:
                await asyncio.sleep(ttft)
                rec["status"] = "cut"
                await drop(scope, receive)
                return
            if total:
                await asyncio.sleep(total)
            if beh.get("error_after") is not None:  # no stream to break: answer with the error
                await fail(ApiError(status, error_message(beh, status), beh.get("error_type")))
                return
            rec["status"] = 200
            hdrs = [(b"content-type", b"application/json"), *fam.response_headers(req), *extra_headers]
            await send_json(send, 200, fam.render(req, plan), hdrs)
            return
        await self.stream(scope, receive, send, fam, req, plan, beh, ttft, rate, rec, extra_headers)

    async def stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        fam: Family,
        req: Req,
        plan: Plan,
        beh: dict[str, Any],
        ttft: float,
        rate: float,
        rec: dict[str, Any],
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        st = self.state
        st.active_streams += 1
        try:
            hdrs = [
                (b"content-type", fam.stream_content_type),
                (b"cache-control", b"no-cache"),
            ]
            hdrs += fam.response_headers(req) + extra_headers
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            transport = transport_of(scope)
            loop = asyncio.get_running_loop()
            n = len(plan.deltas)
            cut = beh.get("cut_after")
            err_after = beh.get("error_after")
            stop_at = n
            if cut is not None:
                stop_at = min(stop_at, cut)
            if err_after is not None:
                stop_at = min(stop_at, err_after)
            natural_end = cut is None and err_after is None
            # the last token goes out together with the terminal events
            body_end = stop_at - 1 if natural_end and n > 0 else stop_at
            first = loop.time() + ttft
            interval = 1.0 / rate if rate else 0.0
            preamble_sent = False
            i = 0
            while i < body_end:
                due = first + i * interval
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                if interval:
                    j = int((now - first) / interval) + 1
                    j = max(i + 1, min(j, body_end, i + BATCH))
                else:
                    j = min(body_end, i + BATCH)
                parts = []
                if not preamble_sent:
                    parts.append(fam.s_preamble(req))
                    preamble_sent = True
                for k in range(i, j):
                    d = plan.deltas[k]
                    if d:
                        parts.append(fam.s_delta(req, d, k))
                if transport is not None and transport.is_closing():
                    rec["status"] = "client_gone"
                    return
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                if not interval and j < body_end:
                    await asyncio.sleep(0)  # let other streams run between batches
                i = j
            # the terminal step, due when the next token slot comes up: the last token with the
            # end events, or (after stop_at tokens) a cut / an in-band error
            due = first + (max(0, n - 1) if natural_end else stop_at) * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            if transport is not None and transport.is_closing():
                rec["status"] = "client_gone"
                return
            if cut is not None and (err_after is None or cut <= err_after):
                rec["status"] = "cut"
                await drop(scope, receive)
                return
            if err_after is not None:
                status = beh["status"]
                etype = beh.get("error_type") or fam.error_type(status)
                tail = fam.s_error(req, status, error_message(beh, status), etype)
                rec["status"] = f"error_after:{status}"
            else:
                tail = b"" if preamble_sent else fam.s_preamble(req)
                tail += fam.s_end(req, plan, plan.deltas[-1] if n else "")
                rec["status"] = 200
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            st.active_streams -= 1


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------


def make_server(host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", **config: Any):
    """Build (uvicorn.Server, bound socket, State). Bind first so port 0 picks a free port."""
    import socket

    import uvicorn

    state = State(config)
    app = FakeProviderApp(state)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    cfg = uvicorn.Config(
        app,
        http=tracking_protocol_class(),
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level=log_level,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
        ws="none",
    )
    logging.getLogger("uvicorn.error").addFilter(QuietDrop())
    server = uvicorn.Server(cfg)
    return server, sock, state
