"""The API over HTTP: one client per command, errors as one line, server-sent events."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from client.output import fail


class StreamUnavailable(Exception):
    """An SSE endpoint that is not there (or answered something else than a stream)."""



def error_detail(response: httpx.Response) -> str:
    """What the API said went wrong, in one line."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's 422: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        if "message" in detail:
            return str(detail["message"])
        return json.dumps(detail)
    return " ".join(str(detail).split())


def transport_message(exc: Exception, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)) or "connection failed"
        reason = reason[0].lower() + reason[1:]
        return f"cannot reach {url}: {reason}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"invalid base URL {url!r}: {exc}"
    reason = str(exc) or type(exc).__name__
    return f"the connection to {url} broke: {reason}"


class Api:
    def __init__(self, base_url: str, api_key: str | None, timeout: float,
                 missing_key: str = "no API key: set CHATFLEET_API_KEY or pass --api-key"):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.missing_key = missing_key
        self.timeout = httpx.Timeout(timeout, connect=10.0)
        self._client: httpx.Client | None = None

    def with_key(self, api_key: str | None, missing_key: str) -> Api:
        """The same API, called with another key (the admin key)."""
        other = Api(self.base_url, api_key, 1.0, missing_key)
        other.timeout = self.timeout
        return other

    @property
    def client(self) -> httpx.Client:
        if not self.api_key:
            fail(self.missing_key)
        if self._client is None:
            try:
                self._client = httpx.Client(base_url=self.base_url, headers={"x-api-key": self.api_key},
                                            timeout=self.timeout)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as exc:
                fail(f"invalid base URL {self.base_url!r}: {exc}")
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        fail(f"{response.status_code} {error_detail(response)}")

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.check(self.client.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            fail(transport_message(exc, self.base_url))
        except httpx.InvalidURL as exc:
            fail(f"invalid base URL {self.base_url!r}: {exc}")

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs).json()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """A streamed response, its status already checked (transport errors are left to the
        caller, which may want to reconnect)."""
        try:
            cm = self.client.stream(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            fail(f"invalid base URL {self.base_url!r}: {exc}")
        with cm as response:
            if not response.is_success and response.status_code != 204:
                response.read()
            yield response

    def download(self, path: str, output: Path | None) -> None:
        """Copy a (JSONL) body to a file or stdout as it arrives."""
        try:
            with self.stream("GET", path) as response:
                self.check(response)
                if output is None:
                    for chunk in response.iter_bytes():
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.buffer.flush()
                    return
                tmp = output.with_name(output.name + ".part")
                try:
                    with open(tmp, "wb") as f:
                        for chunk in response.iter_bytes():
                            f.write(chunk)
                    os.replace(tmp, output)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                    fail(f"cannot write {output}: {exc.strerror or exc}")
        except httpx.TransportError as exc:
            fail(transport_message(exc, self.base_url))


def iter_sse(response: httpx.Response):
    """The stream's events, skipping those without data (``retry:`` hints)."""
    from httpx_sse import EventSource, SSEError

    try:
        for event in EventSource(response).iter_sse():
            if event.data:
                yield event
    except SSEError as exc:
        raise StreamUnavailable(str(exc)) from None


def event_json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        fail(f"the server sent an event that is not JSON: {data[:200]!r}")


# The clients of this invocation, by role: "user" (the API key) and "admin" (the admin key).
_clients: dict[str, Api] = {}


def configure(client: Api, role: str = "user") -> None:
    _clients[role] = client


def api(role: str = "user") -> Api:
    return _clients[role]


def close_all() -> None:
    for client in _clients.values():
        with contextlib.suppress(Exception):
            client.close()
    _clients.clear()
