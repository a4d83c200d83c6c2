"""Tools, structured outputs and images through the OpenAI door, driven by the official ``openai``
SDK (sync, async, ``parse``, the stream helper) against the running fleet: each family's fake
provider checks the wire format the adapter sends, and the zero-key local model answers by
grammar-constrained decoding."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import DEV_KEY
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAMILIES = {"openai": "gpt-4o-mini", "anthropic": "claude-3-haiku-20240307", "gemini": "gemini-1.5-pro-002",
            "mistral": "mistral-large-latest", "bedrock": "claude-3-5-sonnet-bedrock"}
LOCAL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PIXEL = "data:image/png;base64," + base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")).decode()


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


def sdk(stack, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0, **kwargs)


def sent_body(fake, family: str) -> dict:
    (sent,) = fake.requests(family=family)
    return sent["body"]


# --- tools ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tool_call_comes_back_as_openais_tool_calls(stack, fake, family):
    reply = sdk(stack).chat.completions.create(model=FAMILIES[family], messages=ASK, tools=[WEATHER],
                                               tool_choice="required")
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "tok", "days": 1}
    assert reply.usage.completion_tokens >= 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_streamed_tool_call_is_assembled_by_the_sdks_stream_helper(stack, fake, family):
    with sdk(stack).chat.completions.stream(model=FAMILIES[family], messages=ASK, tools=[WEATHER],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            stream_options={"include_usage": True}) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "tok", "days": 1}
    assert final.choices[0].finish_reason == "tool_calls" and final.usage.total_tokens > 0
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.name for e in done] == ["get_weather"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tool_loop_sends_the_history_in_each_familys_shape(stack, fake, family):
    client = sdk(stack)
    first = client.chat.completions.create(model=FAMILIES[family], messages=ASK, tools=[WEATHER])
    (call,) = first.choices[0].message.tool_calls
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    fake.clear_requests()
    second = client.chat.completions.create(model=FAMILIES[family], messages=history, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    body = sent_body(fake, family)
    text = json.dumps(body)
    assert call.id in text or family == "gemini"  # Gemini pairs a result with its call by name
    assert "sunny, 21 C" in text and "get_weather" in text
    if family == "anthropic":
        assert body["messages"][1]["content"][0]["type"] == "tool_use"
        assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id,
                                                    "content": "sunny, 21 C"}
        assert body["tool_choice"] == {"type": "auto"} and body["tools"][0]["input_schema"]["type"] == "object"
    elif family == "gemini":
        assert body["contents"][1]["parts"][0]["functionCall"]["name"] == "get_weather"
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"
        assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    elif family == "bedrock":
        assert body["messages"][1]["content"][0]["toolUse"]["toolUseId"] == call.id
        assert body["messages"][2]["content"][0]["toolResult"]["toolUseId"] == call.id
        assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == WEATHER["function"]["parameters"]
    else:
        assert body["messages"][1]["tool_calls"][0]["id"] == call.id and body["messages"][2]["role"] == "tool"


def test_tool_choice_and_parallel_calls_map_onto_each_family(stack, fake):
    client = sdk(stack)
    forced = {"type": "function", "function": {"name": "get_weather"}}
    for family, model in FAMILIES.items():
        fake.clear_requests()
        client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice=forced,
                                       parallel_tool_calls=False)
        body = sent_body(fake, family)
        if family in ("openai", "mistral"):
            assert body["tool_choice"] == forced and body["parallel_tool_calls"] is False
        elif family == "anthropic":
            assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
        elif family == "gemini":
            assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY",
                                                                    "allowedFunctionNames": ["get_weather"]}}
        else:
            assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}


def test_tool_choice_none_makes_no_call(stack, fake):
    reply = sdk(stack).chat.completions.create(model=FAMILIES["anthropic"], messages=ASK, tools=[WEATHER],
                                               tool_choice="none")
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


def test_async_tool_calls_and_the_jobs_record(stack, fake):
    async def go():
        client = openai.AsyncOpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0)
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=FAMILIES["gemini"], messages=ASK, tools=[WEATHER], tool_choice="required")
            return raw.headers["x-chatfleet-job-id"], raw.parse()
        finally:
            await client.close()

    job_id, reply = asyncio.run(go())
    (call,) = reply.choices[0].message.tool_calls
    with stack.client() as http:
        job = http.get(f"/v4/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    message = job["result"]["chat_completion"]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.function.arguments}


# --- structured outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parse_returns_a_pydantic_object_from_each_family(stack, fake, family):
    reply = sdk(stack).chat.completions.parse(model=FAMILIES[family], response_format=Person,
                                              messages=[{"role": "user", "content": "John is 31"}])
    person = reply.choices[0].message.parsed
    assert isinstance(person, Person) and person == Person(name="tok", age=1, tags=["tok"])
    assert reply.choices[0].finish_reason == "stop"
    body = sent_body(fake, family)
    schema = Person.model_json_schema()
    if family in ("openai", "mistral"):
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
    elif family == "anthropic":  # a forced tool whose input is the answer
        assert body["tool_choice"] == {"type": "tool", "name": "Person"}
        assert body["tools"][0]["input_schema"]["properties"] == {**schema["properties"]}
    elif family == "gemini":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseSchema"] == {  # Gemini's Schema, from pydantic's JSON Schema
            "type": "OBJECT", "title": "Person", "required": ["name", "age", "tags"], "properties": {
                "name": {"type": "STRING", "title": "Name"}, "age": {"type": "INTEGER", "title": "Age"},
                "tags": {"type": "ARRAY", "title": "Tags", "items": {"type": "STRING"}}}}
    else:
        assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "Person"}}


def test_json_object_mode_and_a_streamed_structured_answer(stack, fake):
    client = sdk(stack)
    reply = client.chat.completions.create(model=FAMILIES["openai"], messages=ASK,
                                           response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content) == {}
    with client.chat.completions.stream(model=FAMILIES["openai"], messages=ASK, response_format=Person) as s:
        pieces = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert len(pieces) > 1 and final.choices[0].message.parsed == Person(name="tok", age=1, tags=["tok"])
    # Anthropic's answer is a tool's input, which cannot be continued: it comes whole, in one piece.
    with client.chat.completions.stream(model=FAMILIES["anthropic"], messages=ASK, response_format=Person) as s:
        pieces = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert [p for p in pieces if p] == ['{"name":"tok","age":1,"tags":["tok"]}']
    assert final.choices[0].message.parsed == Person(name="tok", age=1, tags=["tok"])


# --- images ---------------------------------------------------------------------------------------


def test_images_reach_each_family_in_its_shape(stack, fake):
    client = sdk(stack)
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    data = PIXEL.split(",", 1)[1]
    for family, model in [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-haiku-20240307"),
                          ("gemini", "gemini-1.5-pro-002")]:
        fake.clear_requests()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}], max_tokens=3)
        body = sent_body(fake, family)
        if family == "openai":
            assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PIXEL}}
        elif family == "anthropic":
            assert body["messages"][0]["content"][0] == {
                "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
        else:
            assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": data}}


def test_an_image_for_a_model_that_takes_none_is_a_400_naming_the_part(stack, fake):
    client = sdk(stack)
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large-latest", messages=[{"role": "user", "content": parts}])
    assert caught.value.body["param"] == "messages[0].content" and "image" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # Gemini takes no URL: the fleet fetches none
        client.chat.completions.create(model="gemini-1.5-pro-002", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}])
    assert "data URL" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}]}])
    assert caught.value.body["param"] == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize("kwargs, param", [
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "t"}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}},
     "response_format.json_schema.name"),
    ({"logprobs": True}, "logprobs"),
])
def test_bad_tool_and_format_requests_are_400s_naming_the_param(stack, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(**{"model": FAMILIES["openai"], "messages": ASK, **kwargs})
    assert caught.value.body["param"] == param, caught.value.body


# --- the local model, by grammar-constrained decoding ----------------------------------------------


def test_the_local_model_gives_json_valid_against_the_schema(stack):
    client = sdk(stack)
    for seed in range(3):
        reply = client.chat.completions.parse(model=LOCAL, response_format=Person, seed=seed, max_tokens=200,
                                              messages=[{"role": "user", "content": "John is 31 and likes chess"}])
        assert reply.choices[0].finish_reason == "stop", reply
        assert isinstance(reply.choices[0].message.parsed, Person)
    # JSON mode sets no schema: any object, which a 135M model may go on writing to the token
    # bound (then the answer says so, as OpenAI's does); an answer that finished parses.
    for seed in range(3):
        reply = client.chat.completions.create(model=LOCAL, messages=ASK, response_format={"type": "json_object"},
                                               max_tokens=100, seed=seed)
        (choice,) = reply.choices
        assert choice.finish_reason == "length" or isinstance(json.loads(choice.message.content), dict)


def test_the_local_model_calls_tools_with_valid_arguments(stack):
    client = sdk(stack)
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = client.chat.completions.create(model=LOCAL, messages=ASK, tools=[WEATHER], tool_choice=choice,
                                               max_tokens=120)
        (call,) = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    with client.chat.completions.stream(model=LOCAL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                        max_tokens=120) as stream:
        final = stream.get_final_completion()
    jsonschema.validate(json.loads(final.choices[0].message.tool_calls[0].function.arguments),
                        WEATHER["function"]["parameters"])


def test_a_batch_of_extraction_lines_gives_outputs_valid_against_the_schema(stack, fake, tmp_path):
    client = sdk(stack)
    schema = {"name": "person", "strict": True, "schema": Person.model_json_schema()}
    lines = [json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": FAMILIES["openai"] if i % 2 else FAMILIES["anthropic"],
        "messages": [{"role": "user", "content": f"person number {i}"}],
        "response_format": {"type": "json_schema", "json_schema": schema}}}) for i in range(1000)]
    path = tmp_path / "extract.jsonl"
    path.write_text("\n".join(lines) + "\n")
    upload = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in (
        "completed", "failed", "expired", "cancelled") and b, 120, 0.2, "the batch to end")
    assert batch.status == "completed" and batch.request_counts.completed == 1000, batch
    outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(out["custom_id"] for out in outputs) == sorted(f"line-{i}" for i in range(1000))
    for out in outputs:
        content = out["response"]["body"]["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), Person.model_json_schema())


def test_the_readmes_tool_and_structured_output_example_runs_unchanged(stack, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tool_calls" in b]
    # Only where the fleet is and its key differ from `make run`'s.
    code = example.replace("http://127.0.0.1:8000", stack.base_url).replace("cf-dev-key-change-me", DEV_KEY)
    assert code != example
    exec(compile(code, "README.md", "exec"), {})
    person, call = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"name='.*' age=\d+", person), person
    assert call.startswith("Function(arguments='{") and "name='get_weather'" in call, call


def test_a_history_of_another_familys_calls_reaches_mistral_with_its_own_ids(stack, fake):
    foreign = "call_" + "ab" * 12  # OpenAI's shape; Mistral takes 9 letters or digits
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": foreign, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": foreign, "content": "sunny"}]
    reply = sdk(stack).chat.completions.create(model=FAMILIES["mistral"], messages=history, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "stop"
    messages = sent_body(fake, "mistral")["messages"]
    mapped = messages[1]["tool_calls"][0]["id"]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mapped) and messages[2]["tool_call_id"] == mapped


def test_a_model_that_takes_no_tools_says_so(stack):
    for kwargs, param in (({"tools": [WEATHER]}, "tools"), ({"response_format": {"type": "json_object"}},
                                                            "response_format")):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(stack).chat.completions.create(model="llama3-1-405b-instruct-v1", messages=ASK, **kwargs)
        assert caught.value.body["param"] == param


def test_hostile_schemas_and_text_are_400s(stack):
    deep: dict = {"type": "object"}
    for _ in range(150):
        deep = {"type": "array", "items": deep}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).chat.completions.create(model=FAMILIES["openai"], messages=ASK, response_format={
            "type": "json_schema", "json_schema": {"name": "deep", "schema": deep}})
    assert caught.value.body["param"] == "response_format.json_schema.schema" and "deeper" in caught.value.message
    lone = ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
            '"tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "\\ud800"}}]}, '
            '{"role": "tool", "tool_call_id": "c", "content": "x"}]}')
    with stack.client() as http:
        answer = http.post("/v1/chat/completions", content=lone, headers={"content-type": "application/json"})
        assert answer.status_code == 400 and "Unicode" in answer.json()["error"]["message"], answer.text
        answer = http.post("/v1/responses", content='{"model": "gpt-4o-mini", "input": "x", "metadata": '
                                                    '{"a": "\\ud800"}}', headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
