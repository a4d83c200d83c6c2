"""instructor (TOOLS and JSON_SCHEMA) and LlamaIndex (``OpenAILike`` as a function-calling model,
with a ``FunctionAgent``), unchanged, against the running fleet: they pin an older openai SDK
than the test extra's, so they run in their own environment (``.venv-clients``, built by
``make install-test`` from tests/clients/requirements.txt), each call a process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEV_KEY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-clients" / "bin" / "python"
MODELS = ["gpt-4o-mini", "claude-3-haiku-20240307", "gemini-1.5-pro-002", "smollm2-135m-instruct"]


def pinned(stack, scenario: str, model: str) -> dict:
    assert PYTHON.exists(), "the clients' environment is missing: run make install-test"
    done = subprocess.run([str(PYTHON), str(ROOT / "tests" / "clients" / "pinned.py"), scenario,
                           f"{stack.base_url}/v1", DEV_KEY, model], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_instructor_gets_a_validated_model(stack, fake, mode, model):
    out = pinned(stack, f"instructor-{mode}", model)
    assert out["type"] == "Person" and isinstance(out["value"]["name"], str) and isinstance(out["value"]["age"], int)
    if model != "smollm2-135m-instruct":
        assert out["value"] == {"name": "tok", "age": 1}  # the fake's smallest valid instance


@pytest.mark.parametrize("model", MODELS)
def test_a_llamaindex_function_agent_calls_its_tool_and_answers(stack, fake, model):
    out = pinned(stack, "llamaindex-agent", model)
    assert out["calls"], out
    assert out["answer"], out
