"""The fake provider's tools, structured answers and embeddings against the official SDKs: each
SDK builds its family's requests itself (tools, tool choice, a tool's result in the history, JSON
mode, embeddings) and must parse the fake's answer into its own types, streamed and not; and a
request its API refuses is refused by the fake too."""

from __future__ import annotations

import json

import anthropic
import boto3
import openai
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from google import genai
from google.genai import types as genai_types
from mistralai.client import Mistral

from tests.fakeprovider import FakeProvider, start_fake_provider

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city", "days"]}
ARGS = {"city": "tok", "days": 1}  # the fake's smallest instance of SCHEMA


@pytest.fixture(scope="module")
def fake() -> FakeProvider:
    with start_fake_provider() as f:
        yield f


@pytest.fixture(autouse=True)
def _reset(fake: FakeProvider) -> None:
    fake.reset()


def test_openai_tools_stream_and_history(fake: FakeProvider) -> None:
    client = openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
    ask = [{"role": "user", "content": "weather?"}]
    r = client.chat.completions.create(model="gpt-4o", messages=ask, tools=tools, tool_choice="required")
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == ARGS
    with client.chat.completions.stream(model="gpt-4o", messages=ask, tools=tools) as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == ARGS
    history = [*ask, r.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = client.chat.completions.create(model="gpt-4o", messages=history, tools=tools)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    with pytest.raises(openai.BadRequestError):  # a result that answers no call
        client.chat.completions.create(model="gpt-4o", messages=[*ask, history[-1]], tools=tools)
    parsed = client.chat.completions.parse(model="gpt-4o", messages=ask, response_format={
        "type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}})
    assert json.loads(parsed.choices[0].message.content) == ARGS


def test_anthropic_tools_stream_and_history(fake: FakeProvider) -> None:
    client = anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0, timeout=10)
    tools = [{"name": "get_weather", "description": "weather", "input_schema": SCHEMA}]
    ask = [{"role": "user", "content": "weather?"}]
    r = client.messages.create(model="claude-3-haiku-20240307", max_tokens=50, messages=ask, tools=tools,
                               tool_choice={"type": "any"})
    (use,) = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and use.name == "get_weather" and use.input == ARGS
    with client.messages.stream(model="claude-3-haiku-20240307", max_tokens=50, messages=ask, tools=tools,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [ARGS]
    history = [*ask, {"role": "assistant", "content": [b.model_dump() for b in r.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    answer = client.messages.create(model="claude-3-haiku-20240307", max_tokens=50, messages=history, tools=tools)
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    with pytest.raises(anthropic.BadRequestError):  # a tool_result whose tool_use is not in the message before
        client.messages.create(model="claude-3-haiku-20240307", max_tokens=50, tools=tools, messages=[
            *ask, {"role": "assistant", "content": "hm"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]}])
    with pytest.raises(anthropic.BadRequestError):  # input_schema must be an object schema
        client.messages.create(model="claude-3-haiku-20240307", max_tokens=50, messages=ask,
                               tools=[{"name": "f", "input_schema": {"type": "string"}}])


def test_gemini_function_calls_and_json_mode(fake: FakeProvider) -> None:
    client = genai.Client(api_key="gm-test", http_options=genai_types.HttpOptions(base_url=fake.base_url,
                                                                                 timeout=10_000))
    declaration = genai_types.FunctionDeclaration(name="get_weather", description="weather",
                                                  parameters_json_schema=SCHEMA)
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[declaration])],
        tool_config=genai_types.ToolConfig(function_calling_config=genai_types.FunctionCallingConfig(
            mode="ANY", allowed_function_names=["get_weather"])))
    r = client.models.generate_content(model="gemini-1.5-pro-002", contents="weather?", config=config)
    (call,) = r.function_calls
    assert call.name == "get_weather" and call.args == ARGS
    streamed = [c for chunk in client.models.generate_content_stream(
        model="gemini-1.5-pro-002", contents="weather?", config=config) for c in (chunk.function_calls or [])]
    assert [c.args for c in streamed] == [ARGS]
    history = [genai_types.Content(role="user", parts=[genai_types.Part(text="weather?")]),
               genai_types.Content(role="model", parts=[genai_types.Part(function_call=call)]),
               genai_types.Content(role="user", parts=[genai_types.Part.from_function_response(
                   name="get_weather", response={"result": "sunny"})])]
    auto = genai_types.GenerateContentConfig(tools=config.tools)  # AUTO: the model may answer now
    answer = client.models.generate_content(model="gemini-1.5-pro-002", contents=history, config=auto)
    assert answer.text and not answer.function_calls
    structured = client.models.generate_content(
        model="gemini-1.5-pro-002", contents="weather?",
        config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=SCHEMA))
    assert json.loads(structured.text) == ARGS
    with pytest.raises(genai.errors.ClientError):  # a schema without the JSON mime type
        client.models.generate_content(model="gemini-1.5-pro-002", contents="x",
                                       config=genai_types.GenerateContentConfig(response_json_schema=SCHEMA))


def test_mistral_tools(fake: FakeProvider) -> None:
    client = Mistral(api_key="ms-test", server_url=fake.base_url, retry_config=None, timeout_ms=10_000)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
    r = client.chat.complete(model="mistral-large-latest", messages=[{"role": "user", "content": "weather?"}],
                             tools=tools, tool_choice="any")
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == ARGS
    events = list(client.chat.stream(model="mistral-large-latest", messages=[{"role": "user", "content": "w?"}],
                                     tools=tools, tool_choice="any"))
    calls = [c for e in events for ch in e.data.choices for c in (ch.delta.tool_calls or [])]
    assert [json.loads(c.function.arguments) for c in calls] == [ARGS]


def bedrock(fake: FakeProvider):
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=fake.base_url,
                        aws_access_key_id="AKIDFAKE", aws_secret_access_key="fake-secret",
                        config=BotoConfig(retries={"total_max_attempts": 1}, read_timeout=10, connect_timeout=5))


def test_bedrock_converse_tools(fake: FakeProvider) -> None:
    client = bedrock(fake)
    config = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": SCHEMA}}}],
              "toolChoice": {"any": {}}}
    ask = [{"role": "user", "content": [{"text": "weather?"}]}]
    r = client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=ask, toolConfig=config)
    (block,) = r["output"]["message"]["content"]
    assert r["stopReason"] == "tool_use" and block["toolUse"]["input"] == ARGS
    events = list(client.converse_stream(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=ask,
                                         toolConfig=config)["stream"])
    pieces = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                     if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert json.loads(pieces) == ARGS
    history = [*ask, r["output"]["message"], {"role": "user", "content": [{"toolResult": {
        "toolUseId": block["toolUse"]["toolUseId"], "content": [{"text": "sunny"}]}}]}]
    answer = client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=history, toolConfig=config)
    assert answer["stopReason"] == "end_turn"
    with pytest.raises(ClientError):  # toolUse blocks need a toolConfig
        client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=history)


def test_embeddings_through_each_sdk(fake: FakeProvider) -> None:
    oai = openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    r = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=64)
    assert [len(d.embedding) for d in r.data] == [64, 64] and r.usage.prompt_tokens == 2
    gm = genai.Client(api_key="gm-test", http_options=genai_types.HttpOptions(base_url=fake.base_url,
                                                                             timeout=10_000))
    g = gm.models.embed_content(model="gemini-embedding-001", contents=["a", "b"],
                                config=genai_types.EmbedContentConfig(output_dimensionality=32))
    assert [len(e.values) for e in g.embeddings] == [32, 32]
    ms = Mistral(api_key="ms-test", server_url=fake.base_url, retry_config=None, timeout_ms=10_000)
    m = ms.embeddings.create(model="mistral-embed", inputs=["a"])
    assert len(m.data[0].embedding) == 1024
    b = bedrock(fake).invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                   body=json.dumps({"inputText": "a", "dimensions": 256}))
    answer = json.loads(b["body"].read())
    assert len(answer["embedding"]) == 256 and answer["inputTextTokenCount"] == 1
