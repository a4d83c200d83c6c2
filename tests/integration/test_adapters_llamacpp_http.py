"""The OpenAI-compatible adapters against a real OpenAI-compatible server: llama.cpp's own HTTP
server, as ``xllamacpp`` exposes it, running the local model."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.integration.adapter_harness import request_for, run_adapter

pytestmark = pytest.mark.integration

SERVE = textwrap.dedent("""
    import sys, time, xllamacpp
    from shared.settings import Settings
    p = xllamacpp.CommonParams()
    p.model.path = Settings().local_model_path
    p.n_parallel = 1
    p.n_ctx = 4096
    p.verbosity = -1
    server = xllamacpp.Server(p)
    print(server.listening_address, flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
""")


@pytest.fixture(scope="module")
def llama_http():
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("http://"), address
        yield address
    finally:
        proc.stdin.close()
        proc.wait(10)


class Real:
    """Stands in for the fake in the harness: only the base URL is used."""

    def __init__(self, base_url: str):
        self.base_url = base_url


def settings_for(address: str) -> dict:
    return {"openai_base_url": f"{address}/v1", "llm_engine_base_url": f"{address}/v1"}


def test_openai_chat_adapter_against_llama_cpp(llama_http):
    req = request_for("gpt-4o-mini", [{"role": "user", "content": "Name a fruit."}],
                      model_parameters={"max_tokens": 12, "temperature": 0})
    deltas, done = run_adapter(Real(llama_http), "openai", req, **settings_for(llama_http))
    assert "".join(deltas).strip()
    assert done.finish_reason in ("stop", "length")
    assert 0 < done.completion_tokens <= 12 and done.prompt_tokens > 5


def test_llm_engine_completions_adapter_against_llama_cpp(llama_http):
    req = request_for("dolphin-2.9-llama3-8b", [{"role": "user", "content": "Count: one, two,"}],
                      model_parameters={"max_tokens": 8, "temperature": 0, "top_k": 1})
    deltas, done = run_adapter(Real(llama_http), "llm_engine", req, **settings_for(llama_http))
    assert len(deltas) >= 1
    assert (done.finish_reason, done.completion_tokens) == ("length", 8)
    assert done.prompt_tokens > 10  # the rendered ChatML prompt, counted by the real tokenizer


def test_llm_engine_continuation_against_llama_cpp(llama_http):
    """A continued call goes on from the delivered text; usage counts it as completion."""
    base = request_for("dolphin-2.9-llama3-8b", [{"role": "user", "content": "Say hello."}],
                       model_parameters={"max_tokens": 6, "temperature": 0})
    first, _ = run_adapter(Real(llama_http), "llm_engine", base, **settings_for(llama_http))
    carried = first[:3]
    cont = request_for("dolphin-2.9-llama3-8b", [{"role": "user", "content": "Say hello."}],
                       continuation="".join(carried), continuation_events=len(carried),
                       model_parameters={"max_tokens": 6, "temperature": 0})
    rest, done = run_adapter(Real(llama_http), "llm_engine", cont, **settings_for(llama_http))
    assert done.completion_tokens == 6
    assert "".join(carried + rest).strip()


def test_stop_sequences_against_llama_cpp(llama_http):
    req = request_for("dolphin-2.9-llama3-8b", [{"role": "user", "content": "List: a, b, c, d, e, f"}],
                      model_parameters={"max_tokens": 30, "temperature": 0, "stop_sequences": [","]})
    deltas, done = run_adapter(Real(llama_http), "llm_engine", req, **settings_for(llama_http))
    assert "," not in "".join(deltas)
    assert done.finish_reason == "stop"
