"""The fake provider against the official SDKs: real processes, real HTTP on loopback, no mocks.

For each family an official SDK makes a non-streaming and a streaming call and must parse the
fake's answer into the expected text, finish reason and usage; a scripted 429 must surface as the
SDK's rate-limit error, and a scripted stream cut (``cut_after``) must make the SDK raise or end
early rather than hang.
"""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, EventStreamError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

from tests.fakeprovider import FakeProvider, start_fake_provider
from tests.fakeprovider.eventstream import decode_frames
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PROMPT = "say hello to the fake"  # 5 words -> 5 prompt tokens
SYSTEM = "be brief"  # 2 words


def toks(n: int, start: int = 0) -> str:
    return "".join(("" if i == 0 else " ") + f"tok{i}" for i in range(start, start + n))


@pytest.fixture(scope="module")
def fake() -> FakeProvider:
    with start_fake_provider() as f:
        yield f


@pytest.fixture(autouse=True)
def _reset(fake: FakeProvider) -> None:
    fake.reset()


# -------------------------------------------------------------------------------- clients


def oai(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def claude(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0, timeout=10)


def gemini(fake: FakeProvider, **opts) -> genai.Client:
    return genai.Client(
        api_key="gm-test",
        http_options=genai_types.HttpOptions(base_url=fake.base_url, timeout=10_000, **opts),
    )


def mistral(fake: FakeProvider) -> Mistral:
    return Mistral(api_key="ms-test", server_url=fake.base_url, retry_config=None, timeout_ms=10_000)


def bedrock(fake: FakeProvider):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=fake.base_url,
        aws_access_key_id="AKIDFAKE",
        aws_secret_access_key="fake-secret",
        config=BotoConfig(retries={"total_max_attempts": 1}, read_timeout=10, connect_timeout=5),
    )


BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc``, or what it was raised from, is a timeout, whatever the SDK's type."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower() or "timed out" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def broken_stream(consume) -> tuple[list[str], BaseException]:
    """Consume a stream that the fake cuts; it must raise (whatever the SDK's type) and not hang:
    a client waiting on a stream that will never go on ends only at its read timeout, so the
    error must be the cut's, not a timeout's."""
    got: list[str] = []
    with pytest.raises(Exception) as ei:
        consume(got)
    assert not isinstance(ei.value, AssertionError)
    assert not timed_out(ei.value), repr(ei.value)
    return got, ei.value


# -------------------------------------------------------------------------------- OpenAI


def test_openai_chat(fake: FakeProvider) -> None:
    r = oai(fake).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        max_tokens=5,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == toks(5)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 5, 12)
    rec = fake.requests()[-1]
    assert rec["path"] == "/v1/chat/completions" and rec["family"] == "openai"
    assert rec["headers"]["authorization"] == "Bearer sk-test"
    assert rec["body"]["max_tokens"] == 5 and rec["status"] == 200


def test_openai_chat_stream_with_usage(fake: FakeProvider) -> None:
    chunks = list(
        oai(fake).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == toks(16)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (5, 16, 21)
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stop_sequence_and_no_usage_without_option(fake: FakeProvider) -> None:
    client = oai(fake)
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": PROMPT}], stop=["tok3"], max_completion_tokens=10
    )
    assert r.choices[0].message.content == "tok0 tok1 tok2 " and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}],
                                                  stop="tok3", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    assert all(c.usage is None for c in chunks)


def test_openai_completions(fake: FakeProvider) -> None:
    client = oai(fake)
    r = client.completions.create(model="llama-3-8b", prompt=PROMPT, max_tokens=4)
    assert r.object == "text_completion"
    assert r.choices[0].text == toks(4) and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)
    chunks = list(client.completions.create(model="llama-3-8b", prompt=PROMPT, max_tokens=100, stream=True,
                                             stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == toks(16)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens == 5


def test_openai_rate_limit_and_errors(fake: FakeProvider) -> None:
    fake.script([{"status": 429, "retry_after": 1}, {"status": 503}], family="openai")
    client = oai(fake)
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 429
    assert ei.value.response.headers["retry-after"] == "1"
    assert ei.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as ei5:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert ei5.value.status_code == 503
    fake.config(api_key="the-right-key")
    with pytest.raises(openai.AuthenticationError) as ea:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ea.value.body["code"] == "invalid_api_key"
    r = httpx.post(fake.base_url + "/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_openai_stream_cut_and_midstream_error(fake: FakeProvider) -> None:
    client = oai(fake)
    fake.script([{"cut_after": 3}])
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for c in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == toks(3)
    fake.script([{"status": 500, "error_after": 2}])
    with pytest.raises(openai.APIError, match="server had an error"):
        for _ in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    fake.script([{"cut_after": 0}])
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


# -------------------------------------------------------------------------------- Anthropic


def test_anthropic_create(fake: FakeProvider) -> None:
    m = claude(fake).messages.create(
        model="claude-sonnet-4-5",
        system=SYSTEM,
        max_tokens=6,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == toks(6)
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (7, 6)
    m2 = claude(fake).messages.create(
        model="claude", max_tokens=100, stop_sequences=["tok2"], messages=[{"role": "user", "content": PROMPT}]
    )
    assert m2.content[0].text == "tok0 tok1 " and m2.stop_reason == "stop_sequence" and m2.stop_sequence == "tok2"
    m3 = claude(fake).messages.create(model="claude", max_tokens=100, messages=[{"role": "user", "content": PROMPT}])
    assert m3.stop_reason == "end_turn" and m3.usage.output_tokens == 16


def test_anthropic_stream(fake: FakeProvider) -> None:
    with claude(fake).messages.stream(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[{"role": "user", "content": PROMPT}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == toks(16) and final.content[0].text == toks(16)
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 16)
    events = list(claude(fake).messages.create(
        model="claude", max_tokens=3, messages=[{"role": "user", "content": PROMPT}], stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 3


def test_anthropic_errors(fake: FakeProvider) -> None:
    fake.script([{"status": 429, "retry_after": 2}, {"status": 529}], family="anthropic")
    client = claude(fake)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.RateLimitError) as ei:
        client.messages.create(model="claude", max_tokens=10, messages=msgs)
    message = ei.value.body["error"]["message"]
    assert ei.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    assert ei.value.response.headers["retry-after"] == "2"
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude", max_tokens=10, messages=msgs)
    # validation like the real API (raw HTTP, the SDK would not send these)
    h = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    r = httpx.post(fake.base_url + "/v1/messages", headers=h, json={"model": "c", "messages": msgs})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(fake.base_url + "/v1/messages", headers=h, json={
        "model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *msgs]})
    assert r.status_code == 400 and "system" in r.json()["error"]["message"]
    r = httpx.post(fake.base_url + "/v1/messages", headers=h,
                   json={"model": "c", "max_tokens": 5, "messages": msgs * 2})
    assert r.status_code == 400 and "alternate" in r.json()["error"]["message"]
    r = httpx.post(fake.base_url + "/v1/messages", headers={"anthropic-version": "2023-06-01"},
                   json={"model": "c", "max_tokens": 5, "messages": msgs})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_anthropic_stream_cut_and_overloaded_midstream(fake: FakeProvider) -> None:
    client = claude(fake)
    msgs = [{"role": "user", "content": "hi"}]
    fake.script([{"cut_after": 2}])

    def consume(got: list[str]) -> None:
        with client.messages.stream(model="claude", max_tokens=50, messages=msgs) as s:
            for t in s.text_stream:
                got.append(t)

    got, exc = broken_stream(consume)
    assert "".join(got) == toks(2)
    # anthropic's stream iterator lets the transport error through unwrapped
    assert isinstance(exc, anthropic.APIConnectionError) or "incomplete chunked read" in str(exc)
    fake.script([{"status": 529, "error_after": 1}])
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        with client.messages.stream(model="claude", max_tokens=50, messages=msgs) as s:
            for _ in s.text_stream:
                pass


# -------------------------------------------------------------------------------- Gemini


def test_gemini_generate(fake: FakeProvider) -> None:
    client = gemini(fake)
    r = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=genai_types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=3, temperature=0.2),
    )
    assert r.text == toks(3)
    assert r.candidates[0].content.role == "model"
    assert r.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (7, 3, 10)
    rec = fake.requests()[-1]
    assert rec["family"] == "gemini" and rec["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert rec["headers"]["x-goog-api-key"] == "gm-test"
    # the v1beta path, as documented by Google, works the same
    beta = gemini(fake, api_version="v1beta")
    r2 = beta.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    assert r2.text == toks(16) and r2.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert fake.requests()[-1]["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_gemini_stream(fake: FakeProvider) -> None:
    client = gemini(fake)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents=PROMPT))
    assert len(chunks) == 16
    assert "".join(c.text or "" for c in chunks) == toks(16)
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    u = chunks[-1].usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (5, 16, 21)
    rec = fake.requests()[-1]
    assert rec["path"].endswith(":streamGenerateContent") and rec["query"] == {"alt": "sse"}


def test_gemini_errors_and_cut(fake: FakeProvider) -> None:
    client = gemini(fake)
    fake.script([{"status": 429}], family="gemini")
    with pytest.raises(genai_errors.ClientError) as ei:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ei.value.code == 429 and ei.value.status == "RESOURCE_EXHAUSTED"
    fake.script([{"cut_after": 2}])

    def consume(got: list[str]) -> None:
        for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            got.append(c.text)

    got, _ = broken_stream(consume)
    assert "".join(got) == toks(2)
    fake.script([{"status": 503, "error_after": 1}])
    with pytest.raises(genai_errors.ServerError):
        for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            pass
    r = httpx.post(fake.base_url + "/v1beta/models/g:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = httpx.post(fake.base_url + "/v1beta/models/g:generateContent?key=abc",
                   json={"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status_code == 200 and r.json()["candidates"][0]["content"]["parts"][0]["text"] == toks(16)


# -------------------------------------------------------------------------------- Mistral


def test_mistral(fake: FakeProvider) -> None:
    client = mistral(fake)
    r = client.chat.complete(
        model="mistral-small-latest",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        max_tokens=4,
    )
    assert r.choices[0].message.content == toks(4) and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 4, 11)
    rec = fake.requests()[-1]
    assert rec["family"] == "mistral" and rec["path"] == "/v1/chat/completions"
    events = list(client.chat.stream(model="mistral-small-latest", messages=[{"role": "user", "content": PROMPT}]))
    text = "".join(e.data.choices[0].delta.content or "" for e in events if e.data.choices)
    assert text == toks(16)
    assert events[-1].data.choices[0].finish_reason == "stop"
    u = events[-1].data.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 16, 21)


def test_mistral_errors_and_cut(fake: FakeProvider) -> None:
    client = mistral(fake)
    fake.script([{"status": 429, "retry_after": 1}], family="mistral")
    with pytest.raises(mistral_errors.SDKError) as ei:
        client.chat.complete(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 429
    assert json.loads(ei.value.body)["object"] == "error"
    fake.script([{"cut_after": 2}])

    def consume(got: list[str]) -> None:
        for e in client.chat.stream(model="m", messages=[{"role": "user", "content": "hi"}]):
            got.append(e.data.choices[0].delta.content or "")

    got, _ = broken_stream(consume)
    assert "".join(got) == toks(2)


# -------------------------------------------------------------------------------- Bedrock


def test_bedrock_converse(fake: FakeProvider) -> None:
    r = bedrock(fake).converse(
        modelId=BEDROCK_MODEL,
        system=[{"text": SYSTEM}],
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": 5, "temperature": 0.1},
    )
    assert r["output"]["message"]["role"] == "assistant"
    assert r["output"]["message"]["content"][0]["text"] == toks(5)
    assert r["stopReason"] == "max_tokens"
    assert r["usage"] == {"inputTokens": 7, "outputTokens": 5, "totalTokens": 12}
    assert r["metrics"]["latencyMs"] >= 0
    rec = fake.requests()[-1]
    assert rec["family"] == "bedrock" and rec["path"] == f"/model/{BEDROCK_MODEL}/converse"
    assert rec["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    r2 = bedrock(fake).converse(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": PROMPT}]}],
                                inferenceConfig={"stopSequences": ["tok1"]})
    assert r2["output"]["message"]["content"][0]["text"] == "tok0 " and r2["stopReason"] == "stop_sequence"


def test_bedrock_converse_stream(fake: FakeProvider) -> None:
    resp = bedrock(fake).converse_stream(
        modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": PROMPT}]}]
    )
    events = list(resp["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and events[0]["messageStart"]["role"] == "assistant"
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == toks(16)
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == {"inputTokens": 5, "outputTokens": 16, "totalTokens": 21}
    assert "latencyMs" in events[-1]["metadata"]["metrics"]


def test_bedrock_errors_and_cut(fake: FakeProvider) -> None:
    client = bedrock(fake)
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    fake.script([{"status": 429, "retry_after": 1}], family="bedrock")
    with pytest.raises(client.exceptions.ThrottlingException) as ei:
        client.converse(modelId=BEDROCK_MODEL, messages=msgs)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    fake.script([{"status": 429}], family="bedrock")
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse_stream(modelId=BEDROCK_MODEL, messages=msgs)
    fake.script([{"status": 429, "error_after": 2}], family="bedrock")
    got: list[str] = []
    with pytest.raises(EventStreamError) as es:
        for e in client.converse_stream(modelId=BEDROCK_MODEL, messages=msgs)["stream"]:
            if "contentBlockDelta" in e:
                got.append(e["contentBlockDelta"]["delta"]["text"])
    assert es.value.response["Error"]["Code"] == "throttlingException" and "".join(got) == toks(2)
    fake.script([{"cut_after": 2}], family="bedrock")

    def consume(got: list[str]) -> None:
        for e in client.converse_stream(modelId=BEDROCK_MODEL, messages=msgs)["stream"]:
            if "contentBlockDelta" in e:
                got.append(e["contentBlockDelta"]["delta"]["text"])

    got, _ = broken_stream(consume)
    assert "".join(got) == toks(2)
    with pytest.raises(ClientError) as ev:
        client.converse(modelId=BEDROCK_MODEL, messages=[{"role": "assistant", "content": [{"text": "x"}]}])
    assert ev.value.response["Error"]["Code"] == "ValidationException"
    r = httpx.post(fake.base_url + f"/model/{BEDROCK_MODEL}/converse", json={"messages": msgs})
    assert r.status_code == 403


def test_bedrock_raw_eventstream_frames(fake: FakeProvider) -> None:
    r = httpx.post(fake.base_url + "/model/m/converse-stream",
                   headers={"authorization": "AWS4-HMAC-SHA256 Credential=x"},
                   json={"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                         "inferenceConfig": {"maxTokens": 2}})
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    frames = decode_frames(r.content)
    assert [h[":event-type"] for h, _ in frames] == [
        "messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    assert all(h[":message-type"] == "event" and h[":content-type"] == "application/json" for h, _ in frames)
    assert json.loads(frames[4][1]) == {"stopReason": "max_tokens"}


# -------------------------------------------------------------------------------- knobs & control


def test_echo_mode_timing_and_hang(fake: FakeProvider) -> None:
    client = oai(fake)
    fake.config(mode="echo")
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "one two  three"}])
    assert r.choices[0].message.content == "one two three" and r.usage.completion_tokens == 3
    fake.config(mode="tokens", ttft_ms=150, tokens_per_s=100, tokens=21)
    t0 = time.monotonic()
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    stamps = [time.monotonic() - t0 for c in stream if c.choices and c.choices[0].delta.content]
    # Lower bounds only: the fake waits at least this long whatever the load; how much longer a
    # busy machine takes says nothing about the fake.
    assert stamps[0] >= 0.13, stamps[0]  # first token after 150 ms
    assert stamps[-1] >= 0.13 + 0.19, stamps  # then 20 more tokens at 100/s: 200 ms
    assert len(stamps) == 21
    fake.config(ttft_ms=0, tokens_per_s=0)
    fake.script([{"hang": True}])
    with pytest.raises(openai.APITimeoutError):  # the only way out of a hang: the client's timeout
        oai(fake).with_options(timeout=0.5).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    # The hung handler sees the client leave.
    wait_for(lambda: fake.stats()["active"] == 0, what="the hung handler to end")
    assert fake.requests()[-1]["status"] == "hang"


def test_script_filters_and_times(fake: FakeProvider) -> None:
    fake.script([{"status": 500, "times": 2, "path": "/v1/completions"}])
    client = oai(fake)
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="m", prompt="x")
    assert client.completions.create(model="m", prompt="x").choices[0].text == toks(16)
    fake.script([{"tokens": 3, "stream": True}])
    assert client.completions.create(model="m", prompt="x").choices[0].text == toks(16)
    chunks = list(client.completions.create(model="m", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == toks(3)
    assert fake.pending() == []


def test_thousand_concurrent_streams(fake: FakeProvider) -> None:
    """1,000 concurrent SSE streams in the one server process (minimal asyncio client)."""
    fake.config(tokens=8, tokens_per_s=2)  # each stream lasts 3.5 s: long enough for them all to start
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {fake.host}\r\nauthorization: Bearer k\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(fake.host, fake.port)
        writer.write(head + body)
        data = await reader.read()
        writer.close()
        return data

    async def run() -> list[bytes]:
        return await asyncio.gather(*(one() for _ in range(1000)))

    results = asyncio.run(run())
    assert all(r.startswith(b"HTTP/1.1 200") and r.rstrip().endswith(b"0") and b"data: [DONE]" in r for r in results)
    assert all(r.count(b'"content":"') == 9 for r in results)  # role chunk + 8 tokens
    peak = fake.stats()["peak_active"]  # the server's own count, not a sample
    assert peak >= 500, peak  # they really were concurrent
