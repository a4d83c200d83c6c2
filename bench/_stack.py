"""What the provider benchmarks share: a fleet on loopback in front of the fake provider.

``BenchStack`` starts Redis on a free port, the fake provider (``tests.fakeprovider``), and on
request the API and provider workers, all with the same launcher helpers as ``make run`` and
the integration tests; ``close()`` stops every process it started. Logs go to a temporary
directory (printed), quiet (``CHATFLEET_LOG_LEVEL=WARNING``, Celery at WARNING).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from deploy.devstack import (
    ROOT,
    Fleet,
    api_argv,
    cluster_ports,
    free_port,
    start_rabbitmq,
    start_redis,
    start_redis_cluster,
    wait_ready,
    worker_argv,
)
from shared import keys
from tests.fakeprovider import FakeProvider, start_fake_provider

KEY = "cf-bench-key"
PROVIDER_QUEUES = [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH]


def raise_open_files(want: int = 65536) -> int:
    """Raise this process's soft open-file limit (children inherit it); returns the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def quiet_worker_argv(name: str, queues: list[str], concurrency: int) -> list[str]:
    """``worker_argv`` with Celery's own logging at WARNING (no line per task)."""
    argv = worker_argv(name, queues, concurrency)
    if "--loglevel" in argv:
        argv[argv.index("--loglevel") + 1] = "WARNING"
    return argv


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _child_named(parent: int, comm: str) -> int | None:
    """The pid of a child of ``parent`` whose command name is ``comm``, or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == comm and int(rest[1]) == parent:
            return int(entry.name)
    return None


class BenchStack:
    """Redis + fake provider (+ API, + provider workers), stopped together by ``close()``."""

    def __init__(self, *, fake_knobs: dict[str, Any] | None = None, extra_env: dict[str, str] | None = None,
                 state_redis: bool = False, state_cluster: bool = False, rabbitmq: bool = False):
        """With ``state_redis``, a second Redis (process ``state-redis``, ``state_url``) holds the
        state store and the first one only Celery's broker; with ``state_cluster``, a Redis
        Cluster of three masters (processes ``cluster-0``...) does. With ``rabbitmq``, a RabbitMQ node
        of its own (process ``rabbitmq``, ``broker_url``) is Celery's broker, and the Redis only
        the state store."""
        self.fleet = Fleet()
        self.tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
        self.log_dir = self.tmp / "log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.fake: FakeProvider | None = None
        self.base_url = ""
        try:
            self.fake = start_fake_provider(log_file=self.log_dir / "fake.log", **(fake_knobs or {}))
            self.redis_url = start_redis(self.fleet, free_port(), self.tmp / "redis", self.log_dir)
            self.state_url = self.redis_url
            self.broker_url = self.redis_url
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")}
            if rabbitmq:
                self.broker_url = start_rabbitmq(self.fleet, cluster_ports(1)[0], self.tmp / "rabbitmq", self.log_dir)
                env["CHATFLEET_BROKER_URL"] = self.broker_url
            if state_redis:
                self.state_url = start_redis(self.fleet, free_port(), self.tmp / "state-redis", self.log_dir,
                                             name="state-redis")
                env["CHATFLEET_STATE_REDIS_URL"] = self.state_url
            elif state_cluster:
                self.state_url = start_redis_cluster(self.fleet, cluster_ports(3), self.tmp / "cluster", self.log_dir)
                env["CHATFLEET_STATE_REDIS_URL"] = self.state_url
            env.update({
                "CHATFLEET_REDIS_URL": self.redis_url,
                "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
                "CHATFLEET_DEV_API_KEY": KEY,
                "CHATFLEET_DATA_DIR": str(self.tmp),
                "CHATFLEET_LOG_LEVEL": "WARNING",
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": f"{self.fake.base_url}/v1",
                "PYTHONUNBUFFERED": "1",
            })
            env.update(extra_env or {})
            self.env = env
        except BaseException:
            self.close()
            raise

    # processes ----------------------------------------------------------------------------
    def start_api(self, name: str = "api") -> str:
        """An API process on a free port; returns its URL (the first one started is ``base_url``)."""
        port = free_port()
        self.fleet.spawn(name, api_argv("127.0.0.1", port), self.env, self.log_dir)
        url = f"http://127.0.0.1:{port}"
        self.base_url = self.base_url or url
        return url

    def start_worker(self, concurrency: int = 200, name: str = "interactive") -> int:
        """A provider worker (interactive + batch queues), Celery hostname ``{name}@%h``;
        returns its pid. Its pool of Redis connections follows its concurrency
        (CHATFLEET_WORKER_CONCURRENCY), as it would in a deployment sized that way."""
        env = {**self.env, "CHATFLEET_WORKER_CONCURRENCY": str(concurrency)}
        proc = self.fleet.spawn(f"worker-{name}", quiet_worker_argv(name, PROVIDER_QUEUES, concurrency), env,
                                self.log_dir)
        return proc.pid

    def stop_worker(self, name: str = "interactive") -> None:
        self.fleet.stop(f"worker-{name}", timeout=40)

    def wait_ready(self, worker_name: str = "interactive", timeout: float = 120.0) -> None:
        """Until /readyz lists a worker ``{worker_name}@...`` on the interactive queue."""
        import httpx

        wait_ready(self.base_url, PROVIDER_QUEUES[:1], timeout=timeout, fleet=self.fleet)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                workers = httpx.get(f"{self.base_url}/readyz", timeout=2).json().get("workers", {})
                if any(h.startswith(worker_name + "@") for h in workers.get(PROVIDER_QUEUES[0], [])):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"worker {worker_name} not ready after {timeout:g} s")

    def pid(self, name: str) -> int | None:
        proc = self.fleet.procs.get(name)
        if proc is None:
            return None
        if name == "rabbitmq":  # its script waits on the Erlang VM, which does the work
            return _child_named(proc.pid, "beam.smp") or proc.pid
        return proc.pid

    def close(self) -> None:
        """Stop every process started here; drop Redis's data (the logs stay in ``self.tmp``)."""
        try:
            self.fleet.stop_all(timeout=40)
        finally:
            if self.fake is not None:
                self.fake.stop()
                self.fake = None
            shutil.rmtree(self.tmp / "redis", ignore_errors=True)
            shutil.rmtree(self.tmp / "state-redis", ignore_errors=True)
            shutil.rmtree(self.tmp / "rabbitmq", ignore_errors=True)
            shutil.rmtree(self.tmp / "cluster", ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The benchmarks' own tools (schemathesis, the LiteLLM proxy): an environment apart from the
# fleet's, built on first use.
BENCH_ENV = ROOT / "var" / "bench-env"


def bench_tool(executable: str, requirement: str) -> Path:
    """``executable`` of ``requirement``, installed into ``var/bench-env`` if it is not there."""
    exe = BENCH_ENV / "bin" / executable
    if not exe.exists():
        if not (BENCH_ENV / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_ENV)], check=True)
        subprocess.run([str(BENCH_ENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", requirement],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return exe


def run_async(coro):
    """``coro`` run to its end on uvloop where installed (as the fleet runs), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextlib.contextmanager
def fresh_redis() -> Iterator[tuple[str, int]]:
    """A Redis of its own on a free port for the length of the block: (URL, pid)."""
    fleet = Fleet()
    tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
    try:
        url = start_redis(fleet, free_port(), tmp / "redis", tmp / "log")
        yield url, fleet.procs["redis"].pid
    finally:
        fleet.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def table(headers: list[str], rows: list[list[str]], left_first: bool = False) -> str:
    """A Markdown table padded for the terminal: columns right-aligned (the first one left-aligned
    with ``left_first``)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    if left_first:
        line = "| " + headers[0].ljust(widths[0]) + line[2 + widths[0]:]
        sep = "|:" + "-" * (widths[0] + 1) + sep[widths[0] + 3:]
        body = ["| " + r[0].ljust(widths[0]) + b[2 + widths[0]:] for r, b in zip(rows, body)]
    return "\n".join([line, sep, *body])


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


class CpuWindow:
    """Cores kept busy over a window, per process of interest and for the whole machine, so that
    load from processes outside the benchmark (other tests, builds) shows in the figures."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = {k: v for k, v in pids.items() if v}
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.m0 = machine_jiffies()

    def stop(self) -> dict[str, float]:
        """Cores busy since ``start()``: one entry per process, ``machine`` and ``others``
        (machine minus the processes named)."""
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        out = {k: (cpu_seconds(p) - self.cpu0[k]) / elapsed for k, p in self.pids.items()}
        m1 = machine_jiffies()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        ncpu = os.cpu_count() or 1
        out["machine"] = busy / total * ncpu if total else float("nan")
        out["others"] = out["machine"] - sum(v for k, v in out.items() if k != "machine")
        return out
