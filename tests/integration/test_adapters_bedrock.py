"""The Bedrock ConverseStream adapter (SigV4, AWS event stream) against the fake provider."""

import dataclasses
import re
import urllib.parse

import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from shared.jobspec import Turn
from tests.conftest import fake_provider_settings
from tests.integration.adapter_harness import (
    HI,
    adapter_error,
    request_for,
    run_adapter,
)
from worker.providers.base import ProviderError
from worker.providers.bedrock import BedrockProvider, converse_messages

pytestmark = pytest.mark.integration

MODEL = "llama3-1-405b-instruct-v1"
UPSTREAM = "meta.llama3-1-405b-instruct-v1:0"
AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<credential>[^,]+), SignedHeaders=(?P<signed>[^,]+), "
                  r"Signature=(?P<signature>[0-9a-f]{64})$")


def user(text):
    return {"role": "user", "content": [{"text": text}]}


def test_bedrock_request_on_the_wire(fake):
    run_adapter(fake, "bedrock", request_for(MODEL, HI, model_parameters={"max_tokens": 5}))
    (sent,) = fake.requests(family="bedrock")
    assert sent["path"] == f"/model/{UPSTREAM}/converse-stream"
    assert sent["body"] == {"messages": [user("say something nice")],
                            "inferenceConfig": {"maxTokens": 5, "temperature": 0.2}}
    headers = sent["headers"]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/us-east-1/bedrock/aws4_request" in headers["authorization"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-amz-date"])
    assert "x-amz-security-token" not in headers
    assert headers["content-type"] == "application/json"
    assert "secret-test" not in str(sent)


def test_bedrock_model_id_is_url_encoded(fake):
    provider = BedrockProvider(None, fake_provider_settings(fake))
    url = httpx.URL(provider._url(request_for(MODEL, HI)))
    assert url.raw_path == b"/model/meta.llama3-1-405b-instruct-v1%3A0/converse-stream"
    default = BedrockProvider(None, fake_provider_settings(fake, bedrock_endpoint_url=None, aws_region="eu-west-3"))
    assert default._url(request_for(MODEL, HI)).startswith("https://bedrock-runtime.eu-west-3.amazonaws.com/model/")


def _check_signature(fake, sent, secret="secret-test", token=None):
    """Recompute the SigV4 signature of the recorded request with botocore, independently of the
    adapter: method, URL (the model id percent-encoded as sent), the signed headers as received
    and the body bytes (orjson output round-trips exactly: same keys, same order, same numbers)."""
    headers = sent["headers"]
    match = AUTH.match(headers["authorization"])
    assert match, headers["authorization"]
    signed = match["signed"].split(";")
    assert {"host", "x-amz-date", "content-type"} <= set(signed)
    body = orjson.dumps(sent["body"])
    assert int(headers["content-length"]) == len(body)
    assert sent["path"] == f"/model/{UPSTREAM}/converse-stream"
    path = "/model/" + urllib.parse.quote(UPSTREAM, safe="") + "/converse-stream"

    def signature(data: bytes, secret: str = secret) -> tuple[str, str]:
        request = AWSRequest(method=sent["method"], url=fake.base_url + path, data=data,
                             headers={name: headers[name] for name in signed})
        request.context["timestamp"] = headers["x-amz-date"]
        auth = SigV4Auth(Credentials("AKIDTEST", secret, token), "bedrock", "us-east-1")
        canonical = auth.canonical_request(request)
        string_to_sign = auth.string_to_sign(request, canonical)
        return auth.signature(string_to_sign, request), auth.signed_headers(auth.headers_to_sign(request))

    expected, expected_signed = signature(body)
    assert match["signature"] == expected
    assert match["signed"] == expected_signed
    assert match["credential"] == f"AKIDTEST/{headers['x-amz-date'][:8]}/us-east-1/bedrock/aws4_request"
    # The check has teeth: another body, or another secret, gives another signature.
    assert signature(body + b" ")[0] != match["signature"]
    assert signature(body, secret + "x")[0] != match["signature"]


def test_bedrock_signature_is_valid(fake):
    req = request_for(MODEL, [{"role": "system", "content": "be nice"}, *HI],
                      model_parameters={"max_tokens": 3, "temperature": 0.5, "stop_sequences": ["tok9"]})
    run_adapter(fake, "bedrock", req)
    (sent,) = fake.requests(family="bedrock")
    _check_signature(fake, sent)


def test_bedrock_session_token_is_sent_and_signed(fake):
    run_adapter(fake, "bedrock", request_for(MODEL, HI), aws_session_token="session-tok")
    (sent,) = fake.requests(family="bedrock")
    assert sent["headers"]["x-amz-security-token"] == "session-tok"
    assert "x-amz-security-token" in AUTH.match(sent["headers"]["authorization"])["signed"].split(";")
    _check_signature(fake, sent, token="session-tok")


def test_bedrock_body_system_merging_stop_and_defaults(fake):
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello there"},
                {"role": "user", "content": "say something nice"}, {"role": "assistant", "content": "ok"},
                {"role": "system", "content": "be brief"}, {"role": "user", "content": "go"}]
    req = request_for(MODEL, messages, model_parameters={"top_p": 0.9, "temperature": 0.7,
                                                         "stop_sequences": ["tok3"]})
    deltas, done = run_adapter(fake, "bedrock", req)
    assert "".join(deltas) == "tok0 tok1 tok2 "
    # prompt tokens: every word of the input, system included (4 + 2 + 3 + 1 + 1)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 11, 4)
    body = fake.requests(family="bedrock")[0]["body"]
    assert body["system"] == [{"text": "be nice"}, {"text": "be brief"}]
    assert body["messages"] == [user("hello there\n\nsay something nice"),
                                {"role": "assistant", "content": [{"text": "ok"}]}, user("go")]
    # no max_tokens given: the job's bound (the reservation, here the model's output limit too)
    assert body["inferenceConfig"] == {"maxTokens": 4096, "temperature": 0.7, "topP": 0.9,
                                       "stopSequences": ["tok3"]}
    assert "additionalModelRequestFields" not in body


def test_bedrock_spec_extra_goes_to_additional_model_request_fields(fake):
    req = request_for(MODEL, HI)
    req = dataclasses.replace(req, model=req.model.model_copy(update={"extra": {"top_k": 40}}))
    deltas, done = run_adapter(fake, "bedrock", req)
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(16))
    assert (done.finish_reason, done.completion_tokens) == ("stop", 16)
    body = fake.requests(family="bedrock")[0]["body"]
    assert body["additionalModelRequestFields"] == {"top_k": 40} and "top_k" not in body


def test_bedrock_conversation_must_start_with_user(fake):
    req = request_for(MODEL, [{"role": "system", "content": "be nice"}, {"role": "assistant", "content": "hi"}, *HI])
    err = adapter_error(fake, "bedrock", req)
    assert (err.code, err.retryable) == ("invalid_request", False)
    assert "start with a user message" in err.message
    assert fake.requests(family="bedrock") == []


def test_bedrock_throttling_exception_frame_is_named(fake):
    fake.script([{"status": 429, "error_after": 1}], family="bedrock")
    err = adapter_error(fake, "bedrock", request_for(MODEL, HI))
    assert "throttlingException" in err.message and err.status == 429


def test_bedrock_slow_first_token_hits_first_token_timeout(fake):
    """Headers arrive at once; the first event-stream frame does not: the byte stream is timed."""
    fake.script([{"ttft_ms": 2000}], family="bedrock")
    err = adapter_error(fake, "bedrock", request_for(MODEL, HI), provider_first_token_timeout=0.5)
    assert err.code == "upstream_timeout" and "first token" in err.message


def test_bedrock_continues_with_an_assistant_prefill(fake):
    req = request_for(MODEL, HI, continuation="tok0 tok1", continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "bedrock", req)
    body = fake.requests(family="bedrock")[0]["body"]
    assert body["messages"] == [user("say something nice"),
                                {"role": "assistant", "content": [{"text": "tok0 tok1"}]}]
    assert body["inferenceConfig"]["maxTokens"] == 3  # 5 minus the 2 delivered tokens
    assert "".join(deltas) == " tok2 tok3 tok4"
    # One call's worth of usage: the fake counted the prefill (2 words) as input; it is output.
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", 3, 3 + 2)
    _check_signature(fake, fake.requests(family="bedrock")[0])


def test_bedrock_prefill_trailing_whitespace_is_held_back(fake):
    """Bedrock rejects a final assistant message ending in whitespace: the prefill goes without
    it, and the answer's leading space, which the subscriber already has, is not sent again."""
    delivered = "tok0 tok1 "
    req = request_for(MODEL, HI, continuation=delivered, continuation_events=2,
                      model_parameters={"max_tokens": 5})
    deltas, done = run_adapter(fake, "bedrock", req)
    body = fake.requests(family="bedrock")[0]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": [{"text": "tok0 tok1"}]}
    assert delivered + "".join(deltas) == "tok0 tok1 tok2 tok3 tok4"
    assert done.completion_tokens == 5


def test_bedrock_default_max_tokens_is_reduced_when_continuing(fake):
    req = request_for(MODEL, HI, continuation="tok0", continuation_events=1)
    run_adapter(fake, "bedrock", req)
    assert fake.requests(family="bedrock")[0]["body"]["inferenceConfig"]["maxTokens"] == 4095


def test_converse_messages_rules():
    messages, system = converse_messages((Turn("system", "s"), Turn("user", ""), Turn("user", "u")))
    assert messages == [user("u")] and system == [{"text": "s"}]
    with pytest.raises(ProviderError) as exc:
        converse_messages((Turn("system", "s"),))
    assert exc.value.code == "invalid_request" and not exc.value.retryable
