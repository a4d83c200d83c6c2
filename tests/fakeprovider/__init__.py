"""Fake LLM provider server for integration tests and benchmarks.

    from tests.fakeprovider import start_fake_provider

    with start_fake_provider(ttft_ms=50, tokens_per_s=100) as fake:
        client = openai.OpenAI(base_url=fake.base_url + "/v1", api_key="x")
        fake.script([{"status": 429, "retry_after": 1}])
        ...
        assert fake.requests()[-1]["body"]["model"] == "gpt-4o"

The server runs as a separate process (``python -m tests.fakeprovider``); this module only
starts it and talks to its control API with the standard library. See README.md.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

__all__ = ["FakeProvider", "start_fake_provider"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_READY = "FAKEPROVIDER_READY "


class FakeProvider:
    """Handle on a running fake provider process."""

    def __init__(self, proc: subprocess.Popen[str] | None, base_url: str, log: IO[Any] | None = None):
        self.proc = proc
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._log = log

    # control API --------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"fake provider {method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    def config(self, **knobs: Any) -> dict[str, Any]:
        """Set server-wide defaults (ttft_ms, tokens_per_s, tokens, mode, text, api_key, ...).
        With no arguments, return the current config."""
        if not knobs:
            return self._call("GET", "/_fake/config")
        return self._call("POST", "/_fake/config", knobs)

    def script(self, behaviours: list[dict[str, Any]], *, replace: bool = False, **filters: Any) -> dict[str, Any]:
        """Queue behaviours, consumed in order by the next matching requests.
        ``filters`` (family=, path=, stream=) apply to every behaviour in the list."""
        return self._call("POST", "/_fake/script", {"behaviours": behaviours, "replace": replace, **filters})

    def pending(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/script")["pending"]

    def requests(self, **filters: Any) -> list[dict[str, Any]]:
        """Recorded requests, oldest first. Filters: family=, path= (glob), since= (id), limit=."""
        qs = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        return self._call("GET", "/_fake/requests" + ("?" + qs if qs else ""))["requests"]

    def clear_requests(self) -> None:
        self._call("DELETE", "/_fake/requests")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/stats")

    def reset(self) -> None:
        """Back to the startup config; empty script and request log."""
        self._call("POST", "/_fake/reset")

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/_fake/health", timeout=2).get("ok"))
        except (OSError, RuntimeError, ValueError):
            return False

    # lifecycle ----------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeProvider({self.base_url!r}, pid={self.proc.pid if self.proc else None})"


def start_fake_provider(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    log_file: str | os.PathLike[str] | None = None,
    startup_timeout: float = 30.0,
    python: str | None = None,
    **defaults: Any,
) -> FakeProvider:
    """Start ``python -m tests.fakeprovider`` on ``host:port`` (port None/0 = a free port) and wait
    until it answers. ``defaults`` are knobs: ttft_ms, tokens_per_s, tokens, mode, text, api_key,
    record_limit, log_level. Server stderr goes to ``log_file`` if given, else is inherited."""
    argv = [python or sys.executable, "-m", "tests.fakeprovider", "--host", host, "--port", str(port or 0)]
    for key, value in defaults.items():
        if value is None:
            continue
        if key == "record_bodies":
            if not value:
                argv.append("--no-record-bodies")
            continue
        argv += ["--" + key.replace("_", "-"), str(value)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 - the process's, closed on stop
    proc = subprocess.Popen(
        argv,
        cwd=str(_REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log if log is not None else None,
        text=True,
    )
    deadline = time.monotonic() + startup_timeout
    base_url = None
    assert proc.stdout is not None
    try:
        while base_url is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fake provider did not start within {startup_timeout}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"fake provider exited during startup (rc={proc.wait()})")
                if line.startswith(_READY):
                    base_url = line[len(_READY) :].strip()
            elif proc.poll() is not None:
                raise RuntimeError(f"fake provider exited during startup (rc={proc.returncode})")
        fake = FakeProvider(proc, base_url, log)
        while not fake.healthy():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("fake provider does not answer /_fake/health")
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        if log is not None:
            log.close()
        raise
    atexit.register(fake.stop)
    return fake
