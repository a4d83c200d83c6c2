"""Fixtures that start real processes: Redis, Celery workers and the API, on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.devstack import (
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
from shared.provider_config import ProviderSettings
from tests.fakeprovider import FakeProvider, start_fake_provider

DEV_KEY = "cf-test-dev-key"
OTHER_KEY = "cf-test-other-key"
ADMIN_KEY = "cf-test-admin-key"
TEST_CATALOG = Path(__file__).with_name("data") / "test_catalog.toml"


@dataclass
class Stack:
    fleet: Fleet
    redis_url: str
    base_url: str
    env: dict[str, str]
    log_dir: Path
    state_url: str = ""  # the state store, when it is not the broker's Redis (``redis_url``)
    broker_url: str = ""  # RabbitMQ, where it is the broker (``redis_url`` is then the state store)

    def __post_init__(self) -> None:
        self.state_url = self.state_url or self.redis_url

    def admin(self) -> httpx.Client:
        return self.client(ADMIN_KEY)

    def client(self, key: str = DEV_KEY, headers: dict[str, str] | None = None, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"x-api-key": key, **(headers or {})},
                            timeout=60, **kwargs)

    def start_worker(self, name: str, queues: list[str], concurrency: int) -> None:
        self.fleet.spawn(name, worker_argv(name, queues, concurrency), self.env, self.log_dir)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.fleet.tail(name)}" for name in list(self.fleet.logs))


def stack_env(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")}
    env.update({
        "CHATFLEET_REDIS_URL": redis_url,
        "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
        "CHATFLEET_DEV_API_KEY": DEV_KEY,
        "CHATFLEET_ADMIN_API_KEY": ADMIN_KEY,
        "CHATFLEET_SYNC_ADMISSION_WAIT_SECONDS": "1",
        "CHATFLEET_CATALOG_PATH": str(TEST_CATALOG),
        "CHATFLEET_DATA_DIR": str(tmp),
        "CHATFLEET_LEASE_SECONDS": "3",
        "CHATFLEET_WORKER_HEARTBEAT_SECONDS": "1",
        "CHATFLEET_LOCAL_MODEL_CONTEXT": "4096",
        "CHATFLEET_FILE_MAX_BYTES": "2000000",
        # Every script call refused if its keys span hash slots, as on Redis Cluster.
        "CHATFLEET_CHECK_SLOTS": "true",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def provider_env(fake_url: str) -> dict[str, str]:
    """Every family configured, all pointing at the fake provider."""
    return {
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{fake_url}/v1",
        "ANTHROPIC_API_KEY": "ak-test", "ANTHROPIC_BASE_URL": fake_url,
        "GEMINI_API_KEY": "gk-test", "GEMINI_BASE_URL": fake_url,
        "MISTRAL_API_KEY": "mk-test", "MISTRAL_BASE_URL": f"{fake_url}/mistral/v1",
        "AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret-test", "AWS_REGION": "us-east-1",
        "BEDROCK_ENDPOINT_URL": fake_url,
        "LLM_ENGINE_BASE_URL": f"{fake_url}/v1", "LLM_ENGINE_API_KEY": "le-test",
    }


def fake_provider_settings(fake: FakeProvider, **overrides) -> ProviderSettings:
    env = {k.lower(): v for k, v in provider_env(fake.base_url).items()}
    env.update(overrides)
    return ProviderSettings(**env)


def start_stack(tmp: Path, *, local_slots: int = 2, interactive: bool = True, fake_url: str | None = None,
                state_redis: bool = False, state_cluster: bool = False, rabbitmq: bool = False,
                **extra: str) -> Stack:
    """A fleet on a Redis of its own; with ``state_redis``, a second Redis for the state store
    (the first one is then only the Celery broker); with ``state_cluster``, a Redis Cluster of
    three masters for it; with ``rabbitmq``, a RabbitMQ node of its own as the broker (process
    ``rabbitmq``; the Redis is then only the state store)."""
    fleet = Fleet()
    log_dir = tmp / "log"
    redis_url = start_redis(fleet, free_port(), tmp / "redis", log_dir)
    state_url = broker_url = ""
    if rabbitmq:
        broker_url = start_rabbitmq(fleet, cluster_ports(1)[0], tmp / "rabbitmq", log_dir)
        extra = {"CHATFLEET_BROKER_URL": broker_url, **extra}
    if state_cluster:
        state_url = start_redis_cluster(fleet, cluster_ports(3), tmp / "cluster", log_dir)
        extra = {"CHATFLEET_STATE_REDIS_URL": state_url, **extra}
    elif state_redis:
        state_url = start_redis(fleet, free_port(), tmp / "state-redis", log_dir, name="state-redis")
        extra = {"CHATFLEET_STATE_REDIS_URL": state_url, **extra}
    if fake_url:
        extra = {**provider_env(fake_url), **extra}
    env = stack_env(redis_url, tmp, CHATFLEET_LOCAL_MODEL_SLOTS=str(local_slots), **extra)
    port = free_port()
    stack = Stack(fleet, redis_url, f"http://127.0.0.1:{port}", env, log_dir, state_url, broker_url)
    queues = [keys.QUEUE_LOCAL]
    stack.start_worker("worker-local", [keys.QUEUE_LOCAL], local_slots)
    if interactive:
        stack.start_worker("worker-interactive", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], 50)
        queues.append(keys.QUEUE_INTERACTIVE)
    fleet.spawn("api", api_argv("127.0.0.1", port), env, log_dir)
    try:
        wait_ready(stack.base_url, queues, timeout=90, fleet=fleet)
        _add_other_account(stack.state_url)
    except Exception:
        print(stack.logs())
        fleet.stop_all()
        raise
    return stack


def _add_other_account(redis_url: str) -> None:
    import asyncio

    from api.accounts import add_api_key, ensure_account
    from shared.connections import async_redis

    async def add():
        redis = async_redis(redis_url)
        await ensure_account(redis, "other")
        await add_api_key(redis, "other", OTHER_KEY)
        await redis.aclose()

    asyncio.run(add())


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory) -> Iterator[FakeProvider]:
    with start_fake_provider(log_file=tmp_path_factory.mktemp("fake") / "fake.log") as fake:
        yield fake


@pytest.fixture
def fake(fake_server) -> FakeProvider:
    """The shared fake provider, reset to its defaults for this test."""
    fake_server.reset()
    return fake_server


@pytest.fixture(scope="session")
def stack(tmp_path_factory, fake_server) -> Iterator[Stack]:
    """One fleet shared by the integration tests that do not break it; every provider family
    points at the fake provider."""
    s = start_stack(tmp_path_factory.mktemp("stack"), fake_url=fake_server.base_url,
                    CHATFLEET_PROVIDER_FIRST_TOKEN_TIMEOUT="5", CHATFLEET_PROVIDER_IDLE_TIMEOUT="5")
    yield s
    s.fleet.stop_all()


@pytest.fixture
def own_stack(tmp_path, fake_server) -> Iterator[callable]:
    """A private fleet for a test that kills or restarts parts of it. ``own_stack.fake`` is the
    (reset) fake provider; pass ``fake_url=own_stack.fake_url`` to point the fleet at it."""
    started: list[Stack] = []
    fake_server.reset()

    def make(**kwargs: Any) -> Stack:
        s = start_stack(tmp_path / f"s{len(started)}", **kwargs)
        started.append(s)
        return s

    make.fake = fake_server
    make.fake_url = fake_server.base_url
    yield make
    for s in started:
        s.fleet.stop_all()

