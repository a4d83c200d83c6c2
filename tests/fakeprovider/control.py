"""The control API under ``/_fake/``: config, script, recorded requests, reset, health, stats."""

from __future__ import annotations

import fnmatch
import os
from typing import Any

import orjson

from .asgi import Receive, Scope, Send, query_of, read_body, send_json
from .connections import TRANSPORTS
from .knobs import FILTER_KEYS, ConfigError, validate_behaviour
from .state import State


async def control(st: State, scope: Scope, receive: Receive, send: Send) -> None:
    raw = await read_body(receive)
    if raw is None:
        return
    method = scope["method"]
    path = scope["path"].rstrip("/")
    query = query_of(scope)
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        await send_json(send, 400, orjson.dumps({"error": "invalid JSON"}))
        return
    try:
        if path == "/_fake/health":
            out: Any = {"ok": True, "pid": os.getpid()}
        elif path == "/_fake/config" and method == "GET":
            out = st.config
        elif path == "/_fake/config" and method == "POST":
            if not isinstance(body, dict):
                raise ConfigError("config body must be a JSON object")
            st.set_config(body)
            out = st.config
        elif path == "/_fake/script" and method == "GET":
            out = {"pending": st.script}
        elif path == "/_fake/script" and method in ("POST", "PUT"):
            out = queue_script(st, body, replace=method == "PUT")
        elif path == "/_fake/requests" and method == "GET":
            out = {"requests": recorded(st, query)}
        elif path == "/_fake/requests" and method == "DELETE":
            st.records.clear()
            out = {"ok": True}
        elif path == "/_fake/reset" and method == "POST":
            st.reset()
            out = {"ok": True}
        elif path == "/_fake/stats":
            out = {
                "active": st.active,
                "active_streams": st.active_streams,
                "peak_active": st.peak_active,
                "total": st.total,
                "pending_script": len(st.script),
                "connections": len(TRANSPORTS),
            }
        else:
            await send_json(send, 404, orjson.dumps({"error": f"unknown control endpoint {method} {path}"}))
            return
    except (ConfigError, ValueError) as e:
        await send_json(send, 400, orjson.dumps({"error": str(e)}))
        return
    await send_json(send, 200, orjson.dumps(out))


def queue_script(st: State, body: Any, *, replace: bool) -> dict[str, Any]:
    """A list of behaviours, or ``{"behaviours": [...], <filters>, "replace": bool}``."""
    filters: dict[str, Any] = {}
    if isinstance(body, dict):
        items = body.get("behaviours", body.get("behaviors"))
        filters = {k: body[k] for k in FILTER_KEYS if k in body}
        replace = replace or bool(body.get("replace"))
    else:
        items = body
    if not isinstance(items, list):
        raise ConfigError("script body must be a list of behaviours or {\"behaviours\": [...]}")
    new = [validate_behaviour({**filters, **b} if isinstance(b, dict) else b) for b in items]
    if replace:
        st.script.clear()
    st.script.extend(new)
    return {"queued": len(new), "pending": len(st.script)}


def recorded(st: State, query: dict[str, str]) -> list[dict[str, Any]]:
    recs = list(st.records)
    if "family" in query:
        recs = [r for r in recs if r["family"] == query["family"]]
    if "path" in query:
        recs = [r for r in recs if fnmatch.fnmatchcase(r["path"], query["path"])]
    if "since" in query:
        recs = [r for r in recs if r["id"] > int(query["since"])]
    if "limit" in query:
        recs = recs[-int(query["limit"]) :] if int(query["limit"]) else []
    return recs
