"""The agent frameworks that pin their own openai SDK, run as a user would run them against the
fleet's OpenAI door: ``python pinned.py SCENARIO BASE_URL KEY MODEL`` prints one JSON line of
what came back. Run in .venv-clients by tests/integration/test_pinned_clients.py."""

from __future__ import annotations

import asyncio
import json
import sys

from pydantic import BaseModel


class Person(BaseModel):
    name: str
    age: int


def instructor_run(mode_name: str, base_url: str, key: str, model: str) -> dict:
    import instructor
    from openai import OpenAI

    client = instructor.from_openai(OpenAI(base_url=base_url, api_key=key, max_retries=0),
                                    mode=getattr(instructor.Mode, mode_name))
    person = client.chat.completions.create(model=model, response_model=Person, max_retries=0, max_tokens=150,
                                            messages=[{"role": "user", "content": "John is 31."}])
    return {"type": type(person).__name__, "value": person.model_dump()}


def llamaindex_run(base_url: str, key: str, model: str) -> dict:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.llms.openai_like import OpenAILike

    calls: list[str] = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    llm = OpenAILike(model=model, api_base=base_url, api_key=key, is_chat_model=True,
                     is_function_calling_model=True, max_tokens=150, max_retries=0, context_window=8192)
    # A small model may call the tool again and again: after 4 rounds the agent answers without tools.
    agent = FunctionAgent(tools=[get_weather], llm=llm, system_prompt="Answer with the tools you have.",
                          early_stopping_method="generate")

    async def go() -> str:
        return str(await agent.run(user_msg="What is the weather in Paris?", max_iterations=4))

    answer = asyncio.run(go())
    return {"calls": calls, "answer": answer}


def main() -> None:
    scenario, base_url, key, model = sys.argv[1:5]
    if scenario.startswith("instructor-"):
        out = instructor_run(scenario.removeprefix("instructor-"), base_url, key, model)
    elif scenario == "llamaindex-agent":
        out = llamaindex_run(base_url, key, model)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
