"""A setting the environment gets wrong stops the process with its variable named and what to
fix: no traceback, and no value (it may be a secret)."""

import subprocess
import sys
from pathlib import Path

import pytest

from shared.provider_config import get_provider_settings
from shared.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh():
    get_settings.cache_clear()
    get_provider_settings.cache_clear()
    yield
    get_settings.cache_clear()
    get_provider_settings.cache_clear()


def test_a_refused_setting_names_its_variable_and_never_its_value(monkeypatch, fresh):
    monkeypatch.setenv("CHATFLEET_JOB_TIME_LIMIT_SECONDS", "-1")
    monkeypatch.setenv("CHATFLEET_BROKER_URL", "redis+cluster://u:s3cret@a:7000")
    with pytest.raises(SystemExit) as refused:
        get_settings()
    text = str(refused.value.code)
    assert "CHATFLEET_JOB_TIME_LIMIT_SECONDS: Input should be greater than 0" in text
    assert "CHATFLEET_BROKER_URL: CHATFLEET_BROKER_URL must be a redis:// or an amqp:// URL" in text
    assert "s3cret" not in text and "-1" not in text


def test_a_refused_provider_setting_names_its_variable(monkeypatch, fresh):
    monkeypatch.setenv("CHATFLEET_PROVIDER_CONNECT_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as refused:
        get_provider_settings()
    assert "CHATFLEET_PROVIDER_CONNECT_TIMEOUT: Input should be a valid number" in str(refused.value.code)
    assert "soon" not in str(refused.value.code)


def test_the_fleet_refuses_to_start_on_a_bad_setting_without_a_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CHATFLEET_DATA_DIR": str(tmp_path), "CHATFLEET_REDIS_URL": "redis://127.0.0.1:1/0",
           "CHATFLEET_MAX_DELIVERIES": "many"}
    started = subprocess.run([sys.executable, "-m", "deploy.devstack"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert "CHATFLEET_MAX_DELIVERIES: Input should be a valid integer" in started.stderr
    assert "Traceback" not in started.stderr and "many" not in started.stderr
