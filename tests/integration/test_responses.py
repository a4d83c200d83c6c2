"""The Responses API (``/v1/responses``) on the fleet's jobs, driven by the official ``openai`` SDK
(sync and async: create, the stream helper, background with polling and cancel, a stream resumed
``starting_after`` a dropped connection, a function tool loop through ``previous_response_id``)
and LangChain's ``use_responses_api``, on the fake providers and the local model."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import DEV_KEY, OTHER_KEY
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
LOCAL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


class Person(BaseModel):
    name: str
    age: int


def sdk(stack, key: str = DEV_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{stack.base_url}/v1", max_retries=0)


def test_a_response_is_a_job_and_can_be_read_back(stack, fake):
    client = sdk(stack)
    raw = client.responses.with_raw_response.create(model=MODEL, input="four words go here", max_output_tokens=3,
                                                    instructions="be brief", metadata={"team": "a"})
    response = raw.parse()
    assert response.id.startswith("resp_") and raw.headers["x-chatfleet-job-id"] == "job_" + response.id[5:]
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "tok0 tok1 tok2" and response.metadata == {"team": "a"}
    assert (response.usage.input_tokens, response.usage.output_tokens) == (6, 3)
    (sent,) = fake.requests()
    assert sent["body"]["messages"][0] == {"role": "system", "content": "be brief"}
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.status == "incomplete"
    items = client.responses.input_items.list(response.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "four words go here"
    with pytest.raises(openai.NotFoundError):
        sdk(stack, OTHER_KEY).responses.retrieve(response.id)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_the_stream_helper_assembles_a_response_numbered_from_zero(stack, fake):
    fake.config(tokens=5)
    with sdk(stack).responses.stream(model=MODEL, input="four words go here") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == "tok0 tok1 tok2 tok3 tok4" and final.status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]


def test_async_create_and_a_structured_answer_from_the_local_model(stack):
    async def go():
        client = openai.AsyncOpenAI(api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0)
        try:
            return await client.responses.parse(model=LOCAL, input="John is 31.", text_format=Person,
                                                max_output_tokens=100)
        finally:
            await client.close()

    response = asyncio.run(go())
    assert response.status == "completed" and isinstance(response.output_parsed, Person)


def test_a_function_tool_loop_through_previous_response_id(stack, fake):
    client = sdk(stack)
    first = client.responses.create(model="claude-3-haiku-20240307", input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice="required")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "tok"}
    fake.clear_requests()
    second = client.responses.create(model="claude-3-haiku-20240307", previous_response_id=first.id, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny, 21 C"}])
    assert second.status == "completed" and second.output_text and second.previous_response_id == first.id
    (sent,) = fake.requests(family="anthropic")
    messages = sent["body"]["messages"]
    assert messages[0]["content"] == [{"type": "text", "text": "Weather in Paris?"}]
    assert messages[1]["content"][0]["type"] == "tool_use" and messages[1]["content"][0]["id"] == call.call_id
    assert messages[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny, 21 C"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, previous_response_id="resp_nothere", input="hi")
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=[{"type": "function_call_output", "call_id": "x", "output": "y"}])
    assert caught.value.body["param"] == "input[0].call_id"


def test_a_streamed_function_call(stack, fake):
    with sdk(stack).responses.stream(model="gemini-1.5-pro-002", input="Weather in Paris?", tools=[WEATHER],
                                     tool_choice={"type": "function", "name": "get_weather"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "tok"}
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds


def test_background_poll_cancel_and_a_resumed_stream(stack, fake):
    client = sdk(stack)
    fake.config(tokens_per_s=20, tokens=30)
    started = client.responses.create(model=MODEL, input="four words go here", background=True)
    assert started.status == "queued" and started.background
    done = wait_for(lambda: (r := client.responses.retrieve(started.id)).status == "completed" and r, 30, 0.1,
                    "the background response")
    assert done.output_text == " ".join(f"tok{i}" for i in range(30))

    # A stream cut after a few events, then resumed after the last one it got: nothing lost, nothing twice.
    streamed = client.responses.create(model=MODEL, input="four words go here", background=True, stream=True)
    head = []
    for event in streamed:
        head.append(event)
        if len(head) == 6:
            break
    streamed.close()
    rid = head[0].response.id
    after = head[-1].sequence_number
    rest = [e.model_dump() for e in client.responses.retrieve(rid, stream=True, starting_after=after)]
    whole = [e.model_dump() for e in client.responses.retrieve(rid, stream=True)]
    assert [e.sequence_number for e in head] + [e["sequence_number"] for e in rest] == list(range(len(whole)))
    assert [e.type for e in head] + [e["type"] for e in rest] == [e["type"] for e in whole]
    assert [e.model_dump() for e in head] + rest == whole  # the same events, word for word
    deltas = [e["delta"] for e in whole if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == " ".join(f"tok{i}" for i in range(30)) and whole[-1]["type"] == "response.completed"

    # A background response is cancelled as its job is: upstream too.
    fake.config(tokens_per_s=2, tokens=100)
    slow = client.responses.create(model=MODEL, input="four words go here", background=True)
    wait_for(lambda: client.responses.retrieve(slow.id).status == "in_progress", 30, 0.1, "the response to start")
    cancelled = client.responses.cancel(slow.id)
    assert cancelled.status == "cancelled"
    wait_for(lambda: fake.stats()["active_streams"] == 0, 10, 0.1, "the upstream call to stop")
    with pytest.raises(openai.BadRequestError):  # only a background response can be
        client.responses.cancel(client.responses.create(model=MODEL, input="hi", max_output_tokens=1).id)


def test_langchain_on_the_responses_api(stack, fake):
    llm = ChatOpenAI(model=MODEL, api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", use_responses_api=True,
                     max_retries=0)
    answer = llm.invoke("four words go here")
    assert answer.text == " ".join(f"tok{i}" for i in range(16))
    structured = llm.with_structured_output(Person).invoke("John is 31.")
    assert structured == Person(name="tok", age=1)


def test_a_batch_of_response_lines(stack, fake, tmp_path):
    client = sdk(stack)
    path = tmp_path / "responses.jsonl"
    bodies = [{"model": MODEL, "input": f"line {i}", "text": {"format": {
        "type": "json_schema", "name": "person", "schema": Person.model_json_schema()}}} for i in range(4)]
    bodies.append({"model": MODEL, "input": "x", "previous_response_id": "resp_abc"})
    path.write_text("".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/responses", "body": b})
                            + "\n" for i, b in enumerate(bodies)))
    upload = client.files.create(file=path.open("rb"), purpose="batch")
    refused = client.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    refused = wait_for(lambda: (b := client.batches.retrieve(refused.id)).status in ("failed", "completed") and b,
                       60, 0.2, "the batch to be validated")
    assert refused.status == "failed" and "previous_response_id" in refused.errors.data[0].message
    path.write_text("".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/responses", "body": b})
                            + "\n" for i, b in enumerate(bodies[:4])))
    upload = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    batch = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("failed", "completed") and b,
                     60, 0.2, "the batch to end")
    assert batch.status == "completed", batch
    for line in client.files.content(batch.output_file_id).text.splitlines():
        body = json.loads(line)["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        (message,) = body["output"]
        assert Person.model_validate_json(message["content"][0]["text"]) == Person(name="tok", age=1)


def test_the_readmes_background_and_embeddings_example_runs_unchanged(stack, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "background=True" in b]
    # Only where the fleet is and its key differ from `make run`'s.
    code = example.replace("http://127.0.0.1:8000", stack.base_url).replace("cf-dev-key-change-me", DEV_KEY)
    assert code != example
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["completed True", "[384, 384, 384]"]


def test_input_messages_may_leave_their_type_out(stack, fake):
    response = sdk(stack).responses.create(model=MODEL, input=[
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": [
            {"type": "input_text", "text": "four words "}, {"type": "input_text", "text": "go here"}]}])
    assert response.status == "completed"
    (sent,) = fake.requests()
    assert sent["body"]["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "four words go here"}]


@pytest.mark.parametrize("kwargs, param", [
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
     "input[0].content[0].image_url"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": 5}}}},
     "text.format.schema"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include"),
    ({"input": "x", "background": True, "store": False}, "background"),
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning_effort"),
    ({"model": "all-minilm-l6-v2", "input": "x"}, "model"),
])
def test_bad_response_requests_are_400s_naming_the_param(stack, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack).responses.create(**{"model": MODEL, **kwargs})
    assert caught.value.body["param"] == param, caught.value.body
