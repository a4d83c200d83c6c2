"""What every hosted family's adapter must do alike, against the fake provider: classify each
fault as the retry policy needs it, never quote a key back, name the setting it lacks, and time
out a silent upstream. What differs by family is in its own test file."""

import asyncio
import dataclasses

import pytest

from shared.logs import make_handler
from tests.helpers import FAMILY_MODELS
from tests.integration.adapter_harness import (
    HI,
    adapter_error,
    request_for,
    run_adapter,
)
from worker.providers.base import ProviderError

pytestmark = pytest.mark.integration


# The hosted families (llm_engine and the local model take a raw prompt: tests of their own).
MODELS = {family: model for family, model in FAMILY_MODELS.items() if family != "llm_engine"}
# The credentials each family is configured with (tests/conftest.py), never to be quoted back.
SECRETS = {"openai": ["sk-test"], "anthropic": ["ak-test"], "gemini": ["gk-test"], "mistral": ["mk-test"],
           "bedrock": ["secret-test", "AKIDTEST"]}
# The setting whose absence makes a family unconfigured, and the variable the error names.
UNCONFIGURED = {"openai": ("openai_api_key", "OPENAI_API_KEY"),
                "anthropic": ("anthropic_api_key", "ANTHROPIC_API_KEY"),
                "gemini": ("gemini_api_key", "GEMINI_API_KEY"),
                "mistral": ("mistral_api_key", "MISTRAL_API_KEY"),
                "bedrock": ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")}
# Families whose errors after the stream started say so in these words.
SAYS_MID_STREAM = {"openai", "anthropic", "gemini"}

FAULTS = {
    "openai": [
        ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
        ({"status": 503}, "upstream_unavailable", True),
        ({"status": 500}, "upstream_unavailable", True),
        ({"status": 400, "message": "bad temperature"}, "upstream_rejected", False),
        ({"status": 400, "message": "This model's maximum context length is 8192 tokens"},
         "context_length_exceeded", False),
        ({"status": 401}, "upstream_auth", False),
        ({"cut_after": 3}, "stream_cut", True),
        ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
    ],
    "anthropic": [
        ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
        ({"status": 529}, "upstream_unavailable", True),
        ({"status": 500}, "upstream_unavailable", True),
        ({"status": 503}, "upstream_unavailable", True),
        ({"status": 400, "message": "temperature: out of range"}, "upstream_rejected", False),
        ({"status": 400, "message": "prompt is too long: 210000 tokens > 200000 maximum"},
         "context_length_exceeded", False),
        ({"status": 401}, "upstream_auth", False),
        ({"status": 404}, "upstream_rejected", False),
        ({"cut_after": 3}, "stream_cut", True),
        ({"status": 529, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),
        ({"status": 400, "error_after": 2, "message": "bad content"}, "upstream_rejected", False),
    ],
    "gemini": [
        ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
        ({"status": 503}, "upstream_unavailable", True),
        ({"status": 500}, "upstream_unavailable", True),
        ({"status": 400, "message": "Invalid value at 'generation_config.temperature'"}, "upstream_rejected", False),
        ({"status": 400, "message": "The input token count (3000000) exceeds the maximum number of tokens allowed "
                                    "(2097152). Input is too long."}, "context_length_exceeded", False),
        ({"status": 401}, "upstream_auth", False),
        ({"status": 403}, "upstream_auth", False),
        ({"status": 404}, "upstream_rejected", False),
        ({"cut_after": 3}, "stream_cut", True),
        ({"status": 503, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),
        ({"status": 400, "error_after": 2, "message": "bad content"}, "upstream_rejected", False),
    ],
    "mistral": [
        ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
        ({"status": 503}, "upstream_unavailable", True),
        ({"status": 500}, "upstream_unavailable", True),
        ({"status": 400, "message": "bad temperature"}, "upstream_rejected", False),
        ({"status": 400, "message": "Prompt contains 200000 tokens, too large for model with 131072 maximum "
                                    "context length"}, "context_length_exceeded", False),
        ({"status": 401}, "upstream_auth", False),
        ({"status": 403}, "upstream_auth", False),
        ({"cut_after": 3}, "stream_cut", True),
        ({"status": 529, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 500, "error_after": 2}, "upstream_unavailable", True),
        ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),
        ({"status": 400, "error_after": 2, "message": "bad thing mid-way"}, "upstream_rejected", False),
    ],
    "bedrock": [
        ({"status": 429, "retry_after": 2}, "upstream_rate_limited", True),
        ({"status": 503}, "upstream_unavailable", True),
        ({"status": 500}, "upstream_unavailable", True),
        ({"status": 400, "message": "Malformed input request: bad temperature"}, "upstream_rejected", False),
        ({"status": 400, "message": "Input is too long for requested model."}, "context_length_exceeded", False),
        ({"status": 401}, "upstream_auth", False),
        ({"status": 403, "message": "The security token included in the request is invalid."}, "upstream_auth", False),
        ({"cut_after": 3}, "stream_cut", True),
        ({"cut_after": 0}, "stream_cut", True),
        ({"status": 429, "error_after": 2}, "upstream_rate_limited", True),        # throttlingException
        ({"status": 503, "error_after": 2}, "upstream_unavailable", True),         # serviceUnavailableException
        ({"status": 500, "error_after": 2}, "upstream_unavailable", True),         # internalServerException
        ({"status": 529, "error_after": 2}, "upstream_unavailable", True),         # modelStreamErrorException
        # validationException
        ({"status": 400, "error_after": 2, "message": "bad thing mid-way"}, "upstream_rejected", False),
    ],
}
FAMILIES = pytest.mark.parametrize("family", list(MODELS))


@FAMILIES
def test_streams_text_then_one_completion_with_usage(fake, family):
    deltas, done = run_adapter(fake, family, request_for(MODELS[family], HI, model_parameters={"max_tokens": 5}))
    assert deltas == ["tok0", " tok1", " tok2", " tok3", " tok4"]  # each token its own delta
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 5)
    assert len(fake.requests(family=family)) == 1


@pytest.mark.parametrize("family, behaviour, code, retryable", [
    (family, *row) for family, rows in FAULTS.items() for row in rows
], ids=[f"{family}-{i}" for family, rows in FAULTS.items() for i in range(len(rows))])
def test_faults_are_classified(fake, family, behaviour, code, retryable):
    fake.script([behaviour], family=family)
    err = adapter_error(fake, family, request_for(MODELS[family], HI))
    assert (err.code, err.retryable) == (code, retryable), err
    if "retry_after" in behaviour:
        assert err.retry_after == 2
    if behaviour.get("message"):  # the upstream's text stays in the worker's log
        assert behaviour["message"] not in err.message
    if "status" in behaviour and "error_after" not in behaviour:
        assert f"HTTP {behaviour['status']}" in err.message
    if "error_after" in behaviour and family in SAYS_MID_STREAM:
        assert "mid-stream" in err.message
    for secret in SECRETS[family]:
        assert secret not in err.message


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini", "mistral"])
def test_a_refused_key_is_not_echoed(fake, family):
    fake.config(api_key="the-right-key")
    err = adapter_error(fake, family, request_for(MODELS[family], HI))
    assert err.code == "upstream_auth" and not err.retryable
    for secret in SECRETS[family]:
        assert secret not in err.message


@FAMILIES
def test_an_unconfigured_family_names_the_variable_and_calls_nobody(fake, family):
    setting, variable = UNCONFIGURED[family]
    err = adapter_error(fake, family, request_for(MODELS[family], HI), **{setting: None})
    assert err.code == "model_unavailable" and variable in err.message and not err.retryable
    assert fake.requests(family=family) == []


@FAMILIES
def test_a_hang_hits_the_first_token_timeout(fake, family):
    fake.script([{"hang": True}], family=family)
    err = adapter_error(fake, family, request_for(MODELS[family], HI), provider_first_token_timeout=0.5)
    assert err.code == "upstream_timeout" and err.retryable
    assert "0.5 s" in err.message


@FAMILIES
def test_a_stall_between_tokens_hits_the_idle_timeout(fake, family):
    fake.script([{"tokens_per_s": 0.1, "tokens": 5}], family=family)  # 10 s between tokens
    err = adapter_error(fake, family, request_for(MODELS[family], HI), provider_idle_timeout=0.3)
    assert err.code == "upstream_timeout" and err.retryable and "next token" in err.message


@pytest.mark.parametrize("family, extra, expect", [
    ("anthropic", {"metadata": {"user_id": "u1"}, "top_k": 3}, {"metadata": {"user_id": "u1"}, "top_k": 3}),
    ("gemini",
     {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
      "generationConfig": {"candidateCount": 1}},
     # a table in extra is merged into ours, not put in its place
     {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
      "generationConfig": {"temperature": 0.2, "maxOutputTokens": 2, "candidateCount": 1}}),
    ("mistral", {"safe_prompt": True, "temperature": 0.1}, {"safe_prompt": True, "temperature": 0.1}),
    ("openai", {"logit_bias": {"50256": -100}}, {"logit_bias": {"50256": -100}}),
])
def test_a_models_extra_and_base_url_win(fake, family, extra, expect):
    req = request_for(MODELS[family], HI, model_parameters={"max_tokens": 2})
    base_url = fake.base_url + ("/v1" if family == "openai" else "/mistral/v1" if family == "mistral" else "")
    req = dataclasses.replace(req, model=req.model.model_copy(update={"extra": extra, "base_url": base_url}))
    # the configured base URL points nowhere: the model's own base_url must win
    deltas, _ = run_adapter(fake, family, req, **{f"{family}_base_url": "http://127.0.0.1:9"})
    assert "".join(deltas) == "tok0 tok1"
    body = fake.requests(family=family)[0]["body"]
    assert {key: body[key] for key in expect} == expect


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("where", ["upfront", "mid-stream"])
def test_an_upstreams_text_reaches_the_log_scrubbed_never_the_client(fake, family, where, caplog):
    secret = SECRETS[family][0]
    text = f"bad request from key {secret} via redis-internal.corp.example:6380"
    fake.script([{"status": 400, "message": text, **({"error_after": 2} if where == "mid-stream" else {})}],
                family=family)
    with caplog.at_level("INFO"):
        err = adapter_error(fake, family, request_for(MODELS[family], HI))
    assert secret not in err.message and "corp.example" not in err.message and "bad request" not in err.message
    logged = "\n".join(make_handler("json").format(r) for r in caplog.records)
    assert "redis-internal.corp.example:6380" in logged, logged  # the operator can read what happened
    assert secret not in logged


def test_a_connection_failure_names_no_host(fake):
    err = adapter_error(fake, "openai", request_for(MODELS["openai"], HI), openai_base_url="http://127.0.0.1:9/v1")
    assert err.code == "upstream_unreachable" and "127.0.0.1" not in err.message and ":9" not in err.message


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini", "mistral", "bedrock"])
def test_a_key_goes_only_to_the_hosts_it_belongs_to(fake, family, caplog):
    # The fake is the family's configured endpoint at 127.0.0.1; a model routed to localhost is
    # another host, which the key is not for, unless the operator names it.
    req = request_for(MODELS[family], HI, model_parameters={"max_tokens": 2})
    path = {"openai": "/v1", "mistral": "/mistral/v1"}.get(family, "")
    elsewhere = fake.base_url.replace("127.0.0.1", "localhost") + path
    req = dataclasses.replace(req, model=req.model.model_copy(update={"base_url": elsewhere}))
    with caplog.at_level("WARNING"):
        err = adapter_error(fake, family, req)
    variable = f"{'AWS' if family == 'bedrock' else family.upper()}_KEY_HOSTS"
    # The client is told which setting to change, not where the model points; the log says where.
    assert err.code == "model_unavailable" and variable in err.message and "localhost" not in err.message
    assert "localhost" in caplog.text
    assert fake.requests(family=family) == []
    deltas, _ = run_adapter(fake, family, req, **{f"{'aws' if family == 'bedrock' else family}_key_hosts": "localhost"})
    assert "".join(deltas) == "tok0 tok1"


def test_llm_engine_calls_another_host_without_its_key(fake):
    req = request_for("llama-3-1-8b-instruct", HI, model_parameters={"max_tokens": 2})
    req = dataclasses.replace(req, model=req.model.model_copy(
        update={"base_url": fake.base_url.replace("127.0.0.1", "localhost") + "/v1"}))
    adapter_error(fake, "llm_engine", req)  # the fake, like a vLLM started with --api-key, wants one
    assert "authorization" not in fake.requests()[-1]["headers"]
    run_adapter(fake, "llm_engine", req, llm_engine_key_hosts="localhost")
    assert fake.requests()[-1]["headers"]["authorization"] == "Bearer le-test"


@pytest.mark.parametrize("family, field", [("openai", ("user",)), ("anthropic", ("metadata", "user_id")),
                                           ("llm_engine", ("user",))])
def test_calls_name_their_account_upstream_opaquely(fake, family, field):
    model = FAMILY_MODELS[family]
    sent = []
    for account in ("acct_alpha", "acct_alpha", "acct_beta"):
        req = dataclasses.replace(request_for(model, HI, model_parameters={"max_tokens": 1}), account_id=account)
        run_adapter(fake, family, req)
        value = fake.requests()[-1]["body"]
        for key in field:
            value = value[key]
        sent.append(value)
    assert sent[0] == sent[1] != sent[2]  # one name per account, the same for all its calls
    assert all(v.startswith("chatfleet-") and "acct_" not in v for v in sent)


# An upstream (or anything posing as one) that puts a key and an internal host in its error's
# structured fields: the client is shown the family's documented names only.
HOSTILE_FIELDS = {"type": "sk-SECRET-TEST-123", "param": "redis-internal.corp.example",
                  "code": "redis-internal.corp.example", "status": "sk-SECRET-TEST-123",
                  "reason": "redis-internal.corp.example"}


@pytest.mark.parametrize("family", list(MODELS))
def test_an_upstreams_error_fields_are_shown_only_when_documented_names(fake, family):
    fake.script([{"status": 400, "message": "x", "error_fields": HOSTILE_FIELDS}], family=family)
    err = adapter_error(fake, family, request_for(MODELS[family], HI))
    assert err.code == "upstream_rejected", err
    assert "SECRET" not in err.message and "corp.example" not in err.message, err.message
    assert "upstream_error" in err.message or family == "bedrock", err.message  # Bedrock's body has no names
    documented = {"openai": ("invalid_request_error", "temperature"),
                  "anthropic": ("invalid_request_error", "temperature"),
                  "gemini": ("INVALID_ARGUMENT", "temperature"),
                  "mistral": ("invalid_request_error", "temperature")}
    if family in documented:
        name, param = documented[family]
        fake.script([{"status": 400, "message": "x", "error_fields": {"type": name, "status": name,
                                                                       "param": f"{param}"}}], family=family)
        err = adapter_error(fake, family, request_for(MODELS[family], HI))
        assert name in err.message and f"param {param}" in err.message, err.message


@pytest.mark.parametrize("family", sorted(SAYS_MID_STREAM | {"bedrock"}))
def test_a_mid_stream_error_kind_is_shown_only_when_a_documented_name(fake, family):
    status = 400 if family == "bedrock" else 500
    fake.script([{"status": status, "error_after": 2, "error_type": "sk-SECRET-TEST-123"}], family=family)
    err = adapter_error(fake, family, request_for(MODELS[family], HI))
    assert "SECRET" not in err.message, err.message


def test_a_deployments_own_endpoint_gets_the_familys_key_only_where_it_may(fake, caplog, monkeypatch):
    """A deployment with a base_url of its own and no key_env: the family's key goes there only
    when the host is named in the family's KEY_HOSTS, as for a model's base_url."""
    from shared.catalog import DeploymentLimits
    from shared.settings import Settings
    from tests.conftest import fake_provider_settings
    from worker.providers.registry import Providers

    elsewhere = DeploymentLimits(base_url=fake.base_url.replace("127.0.0.1", "localhost") + "/v1")

    async def deployment_call(name: str, dep: DeploymentLimits, family: str = "openai", **settings):
        providers = Providers(Settings(), fake_provider_settings(fake, **settings))
        try:
            adapter = providers.for_deployment(name, family, dep)
            model = "llama-3-1-8b-instruct" if family == "llm_engine" else "gpt-4o-mini"
            out = [item async for item in adapter.stream(request_for(model, HI, model_parameters={"max_tokens": 2}))]
            return out
        finally:
            await providers.close()

    with caplog.at_level("WARNING"), pytest.raises(ProviderError) as caught:
        asyncio.run(deployment_call("dep-elsewhere", elsewhere))
    err = caught.value
    assert err.code == "model_unavailable" and "OPENAI_KEY_HOSTS" in err.message and "key_env" in err.message
    assert "localhost" not in err.message and fake.requests() == []
    # Named by the operator: the key goes there.
    asyncio.run(deployment_call("dep-named", elsewhere, openai_key_hosts="localhost"))
    assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-test"
    # A key of its own: that key, not the family's.
    monkeypatch.setenv("DEP_KEY", "sk-deployment")
    asyncio.run(deployment_call("dep-own-key", elsewhere.model_copy(update={"key_env": "DEP_KEY"})))
    assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-deployment"
    # A self-hosted vLLM elsewhere is called without the family's key.
    fake.reset()
    with pytest.raises(ProviderError):  # the fake, like a vLLM started with --api-key, wants one
        asyncio.run(deployment_call("dep-vllm", elsewhere, family="llm_engine"))
    assert fake.requests() and "authorization" not in fake.requests()[-1]["headers"]
