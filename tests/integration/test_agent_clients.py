"""The agent frameworks this field uses, unchanged, against the running fleet's OpenAI door:
LangChain (``bind_tools`` and a tool loop, ``with_structured_output`` by each of its three
methods) and pydantic-ai (an ``output_type`` and a tool), each on the fake provider of OpenAI,
Anthropic and Gemini and on the zero-key local model."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import DEV_KEY

pytestmark = pytest.mark.integration

MODELS = ["gpt-4o-mini", "claude-3-haiku-20240307", "gemini-1.5-pro-002", "smollm2-135m-instruct"]
LOCAL = "smollm2-135m-instruct"


class Person(BaseModel):
    name: str
    age: int


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def chat(stack, model: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=model, api_key=DEV_KEY, base_url=f"{stack.base_url}/v1", max_retries=0,
                      max_tokens=150, **kwargs)


@pytest.mark.parametrize("model", MODELS)
def test_langchain_bind_tools_and_a_tool_loop(stack, fake, model):
    llm = chat(stack, model).bind_tools([get_weather], tool_choice="any" if model == LOCAL else None)
    messages = [HumanMessage("What is the weather in Paris?")]
    first = llm.invoke(messages)
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    second = chat(stack, model).bind_tools([get_weather]).invoke(messages)
    assert second.content or second.tool_calls  # the model had the result; a fake answers it in text
    if model != LOCAL:
        assert second.content and not second.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_langchain_streams_a_tool_call_in_pieces_it_assembles(stack, fake, model):
    llm = chat(stack, model).bind_tools([get_weather], tool_choice="get_weather")
    chunks = list(llm.stream("What is the weather in Paris?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    (call,) = whole.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


# JSON mode sets no schema, so the local model's grammar is any object: a 135M model goes on to the
# token bound about one time in four, which LangChain then cannot parse (test_agents.py checks it).
METHODS = ("json_schema", "function_calling", "json_mode")


@pytest.mark.parametrize("model, method", [(m, k) for m in MODELS for k in METHODS if (m, k) != (LOCAL, "json_mode")])
def test_langchain_with_structured_output_by_each_method(stack, fake, model, method):
    schema = Person if method != "json_mode" else {
        "title": "Person", "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    structured = chat(stack, model).with_structured_output(schema, method=method)
    answer = structured.invoke("John is 31. Give his name and age as JSON.")
    if method == "json_mode":
        assert isinstance(answer, dict)
    else:
        assert isinstance(answer, Person)


def agent_model(stack, model: str) -> OpenAIChatModel:
    return OpenAIChatModel(model, provider=OpenAIProvider(base_url=f"{stack.base_url}/v1", api_key=DEV_KEY))


@pytest.mark.parametrize("model", MODELS)
def test_pydantic_ai_output_type(stack, fake, model):
    agent = Agent(agent_model(stack, model), output_type=Person)
    result = agent.run_sync("John is 31.", model_settings={"max_tokens": 150})
    assert isinstance(result.output, Person)


@pytest.mark.parametrize("model", MODELS[:3])
def test_pydantic_ai_calls_a_tool_then_answers(stack, fake, model):
    agent = Agent(agent_model(stack, model))
    calls: list[str] = []

    @agent.tool_plain
    def weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    result = agent.run_sync("What is the weather in Paris?")
    assert calls and isinstance(result.output, str) and result.output
    sent = [json.dumps(r["body"]) for r in fake.requests()]
    assert any("sunny in" in body for body in sent)  # the tool's result went back to the model
