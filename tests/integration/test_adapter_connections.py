"""Each adapter leaves its connection reusable: one TCP (and, to a real provider, TLS)
handshake serves many calls, even though adapters stop reading at the answer's last event."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import fake_provider_settings
from tests.helpers import FAMILY_MODELS
from tests.integration.adapter_harness import adapter_error, request_for, run_adapter
from worker.providers.base import Completion
from worker.providers.registry import load_adapter
from worker.providers.transport import make_client

pytestmark = pytest.mark.integration

Q = [{"role": "user", "content": "four words go here"}]


def calls_on_one_client(fake, family: str, n: int, max_tokens: int) -> list[Completion]:
    """``n`` calls of ``family``'s adapter, one after the other, on one client (as a worker
    makes them); the completions."""

    async def go() -> list[Completion]:
        settings = fake_provider_settings(fake)
        client = make_client(settings)
        adapter = load_adapter(family)(client, settings)
        done = []
        try:
            for _ in range(n):
                request = request_for(FAMILY_MODELS[family], Q, model_parameters={"max_tokens": max_tokens})
                async for item in adapter.stream(request):
                    if isinstance(item, Completion):
                        done.append(item)
        finally:
            await adapter.close()
            await client.aclose()
        return done

    return asyncio.run(go())


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_consecutive_calls_share_one_connection(fake, family):
    completions = calls_on_one_client(fake, family, 3, 5)
    assert [c.finish_reason for c in completions] == ["length"] * 3
    calls = [r for r in fake.requests() if r["path"] != "/_fake/reset"]
    assert len(calls) == 3
    assert calls[0]["client"] and len({r["client"] for r in calls}) == 1, [r["client"] for r in calls]


def test_concurrent_calls_each_hold_a_connection_then_leave_it_for_the_next(fake):
    from worker.providers.h1 import H1Transport
    from worker.providers.transport import client_limits

    fake.config(tokens_per_s=50)
    url = fake.base_url + "/v1/chat/completions"
    body = {"model": "gpt-4o", "messages": Q, "stream": True, "max_tokens": 3}
    n = 12

    async def go() -> tuple[int, tuple[int, int], tuple[int, int], int]:
        transport = H1Transport(client_limits())
        client = make_client(fake_provider_settings(fake), transport)
        try:
            async def call():
                request = client.build_request("POST", url, json=body, headers={"authorization": "Bearer x"})
                response = await client.send(request, stream=True)
                return response
            responses = await asyncio.gather(*(call() for _ in range(n)))
            during = (transport.open, transport.idle)
            for response in responses:
                await response.aread()
                await response.aclose()
            after = (transport.open, transport.idle)
            again = await asyncio.gather(*(call() for _ in range(n)))
            for response in again:
                await response.aread()
                await response.aclose()
            return sum(r.status_code == 200 for r in responses + again), during, after, transport.open
        finally:
            await client.aclose()

    ok, during, after, open_after_again = asyncio.run(go())
    assert ok == 2 * n
    assert during == (n, 0)  # one connection per call in flight
    assert after == (n, n)  # each kept, idle, once its answer was read
    assert open_after_again == n  # the second round reused them: no new connection
    calls = [r for r in fake.requests() if r["path"] == "/v1/chat/completions"]
    assert len({r["client"] for r in calls}) == n


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_a_cookie_a_provider_sets_is_not_sent_back(fake, family):
    # One client serves every account: a cookie kept from one answer (a load balancer's
    # stickiness, bot management) would go with every later call, whoever makes it.
    fake.script([{"headers": {"set-cookie": "AWSALB=replica-1; Path=/"}}])  # the next call, any family
    calls_on_one_client(fake, family, 2, 3)
    first, second = [r for r in fake.requests() if r["path"] != "/_fake/reset"]
    assert first["behaviour"]["headers"] == {"set-cookie": "AWSALB=replica-1; Path=/"}
    assert not any(name.lower() == "cookie" for name in second["headers"]), second["headers"]


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_a_key_http_refuses_is_never_quoted_back(fake, family, caplog):
    # A line break inside a key: the request cannot be written, and the HTTP library's
    # error quotes the header, key included. The client (and any log) must not get it.
    key = {"openai": "openai_api_key", "anthropic": "anthropic_api_key", "gemini": "gemini_api_key",
           "mistral": "mistral_api_key", "bedrock": "aws_access_key_id", "llm_engine": "llm_engine_api_key"}[family]
    request = request_for(FAMILY_MODELS[family], Q, model_parameters={"max_tokens": 3})
    with caplog.at_level("INFO"):
        err = adapter_error(fake, family, request, **{key: "sk-sec\nret"})
    assert "sk-sec" not in err.message, err.message
    assert "not valid HTTP" in caplog.text and "sk-sec" not in caplog.text
    assert (err.code, err.retryable) == ("upstream_auth", False), err.message


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("family, message, secrets", [
    ("anthropic", "invalid x-api-key: ak-test", ("ak-test", "x-api-key")),
    ("gemini", "API key not valid: gk-test", ("gk-test", "API key")),
])
def test_a_mid_stream_auth_error_is_not_echoed(fake, family, message, secrets, status):
    # These two families report errors inside an answer already streaming; their text can quote the key.
    fake.script([{"status": status, "error_after": 2, "message": message}], family=family)
    err = adapter_error(fake, family, request_for(FAMILY_MODELS[family], Q))
    assert err.code == "upstream_auth" and not err.retryable
    assert not any(secret in err.message for secret in secrets)


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_answers_are_asked_for_uncompressed(fake, family):
    # A compressed stream could inflate far beyond the bytes received.
    run_adapter(fake, family, request_for(FAMILY_MODELS[family], Q, model_parameters={"max_tokens": 3}))
    (call,) = [r for r in fake.requests() if r["path"] != "/_fake/reset"]
    assert call["headers"].get("accept-encoding") == "identity", call["headers"]
