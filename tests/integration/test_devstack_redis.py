"""`make run`'s choice of Redis: its own, unless one is named; and never a Redis that would lose
the fleet's data or mix it with someone else's."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from deploy.devstack import ROOT, Fleet, free_port, redis_argv, redis_refusal, start_redis
from shared.connections import redis_answers, sync_redis
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet():
    f = Fleet()
    yield f
    f.stop_all()


def volatile_redis(fleet: Fleet, tmp_path) -> str:
    port = free_port()
    argv = [a if a != "yes" else "no" for a in redis_argv(port, tmp_path / "volatile")]  # appendonly no
    fleet.spawn("volatile", argv, dict(os.environ), tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_answers(url), what="the volatile Redis")
    return url


def test_a_redis_without_persistence_or_with_foreign_data_is_refused(fleet, tmp_path):
    volatile = volatile_redis(fleet, tmp_path)
    assert "keeps nothing on disk" in redis_refusal(volatile)

    url = start_redis(fleet, free_port(), tmp_path / "durable", tmp_path)
    assert redis_refusal(url) is None  # empty, persistent: the fleet's to use
    client = sync_redis(url)
    client.set("chatfleet:account:a", "x")
    client.lpush("chatfleet.interactive", "m")
    assert redis_refusal(url) is None  # the fleet's own keys
    client.set("session:42", "someone else's")
    refusal = redis_refusal(url)
    assert "not this fleet's" in refusal and "session:42" in refusal
    client.close()


def test_make_run_refuses_a_named_redis_that_keeps_nothing(fleet, tmp_path):
    volatile = volatile_redis(fleet, tmp_path)
    env = {**os.environ, "CHATFLEET_REDIS_URL": volatile, "CHATFLEET_DATA_DIR": str(tmp_path / "var"),
           "CHATFLEET_API_PORT": str(free_port()), "CHATFLEET_FLOWER_PORT": str(free_port())}
    run = subprocess.run([sys.executable, "-m", "deploy.devstack"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()
    assert "keeps nothing on disk" in line and volatile in line


def test_make_run_starts_a_redis_of_its_own_whatever_answers_on_6379(tmp_path):
    """The fleet `make run` starts uses the bundled Redis on a port of its own, not 6379 (where a
    shared machine may run someone else's), and serves the README's request on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")}
    api_port, metrics_port = free_port(), free_port()
    env.update({"CHATFLEET_DATA_DIR": str(tmp_path / "var"), "CHATFLEET_API_PORT": str(api_port),
                "CHATFLEET_FLOWER_PORT": str(free_port()), "CHATFLEET_WORKER_METRICS_PORT": str(metrics_port)})
    proc = subprocess.Popen([sys.executable, "-m", "deploy.devstack"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        while line and "ready in" not in line:
            line = proc.stdout.readline()
        assert "ready in" in line, line
        redis_url = line.split("| Redis ")[1].split(" ")[0]
        assert redis_url.startswith("redis://127.0.0.1:") and not redis_url.startswith("redis://127.0.0.1:6379")
        assert "bundled redis-server" in line
        # Where each worker's metrics are scraped: this fleet's, not whatever else answers on 9100.
        scraped = line.split("| worker metrics ")[1].split(" | ")[0]
        assert f":{metrics_port}" in scraped and "interactive" in scraped and "local" in scraped, scraped
        r = httpx.post(f"http://127.0.0.1:{api_port}/v4/chat-completions", timeout=60,
                       headers={"x-api-key": "cf-dev-key-change-me"},
                       json={"model": "smollm2-135m-instruct", "messages": [{"content": "Hi"}],
                             "model_parameters": {"max_tokens": 5}})
        assert r.status_code == 200 and r.json()["chat_completion"]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(60)


def test_make_runs_admin_key_and_flower_credentials_stay_the_same_from_one_start_to_the_next(tmp_path):
    from deploy.devstack import kept_secrets

    first = kept_secrets(tmp_path / "var")
    assert first["admin_api_key"].startswith("cf-admin-") and first["flower_basic_auth"].startswith("admin:")
    assert (tmp_path / "var" / "dev-secrets.json").stat().st_mode & 0o777 == 0o600
    assert kept_secrets(tmp_path / "var") == first
    (tmp_path / "var" / "dev-secrets.json").write_text("not json")
    assert kept_secrets(tmp_path / "var") != first  # unreadable: made again, not a crash
