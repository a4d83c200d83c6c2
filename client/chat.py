"""``chatfleet chat``: ask a model, print its answer (whole, or token by token)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import httpx
import typer

from client.http import StreamUnavailable, api, event_json, iter_sse, transport_message
from client.output import fail, out

DEFAULT_MODEL = "smollm2-135m-instruct"

Model = Annotated[str, typer.Option("--model", "-m", help="model id (see `chatfleet models`)")]
System = Annotated[str | None, typer.Option("--system", "-s", help="system prompt", show_default=False)]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", min=1, help="at most this many tokens",
                                               show_default=False)]
Temperature = Annotated[float | None, typer.Option("--temperature", "-t", min=0, max=1, show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the JSON the API answered")]
Question = Annotated[str, typer.Argument(help="the user message ('-' reads it from stdin)", show_default=False)]


def chat_body(question: str, model: str, system: str | None, max_tokens: int | None,
              temperature: float | None) -> dict[str, Any]:
    if question == "-":
        question = sys.stdin.read()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    params = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
    if params:
        body["model_parameters"] = params
    return body


def chunk_text(data: dict) -> str:
    return ((data.get("chat_completion") or {}).get("message") or {}).get("content") or ""


def error_text(data: Any) -> str:
    if isinstance(data, dict):
        code, message = data.get("code"), data.get("message") or data.get("detail")
        return f"{code}: {message}" if code and message else str(message or code or data)
    return str(data)



def chat(question: Question, model: Model = DEFAULT_MODEL, stream: Annotated[bool, typer.Option(
             "--stream", help="print the answer token by token as it is generated")] = False,
         system: System = None, max_tokens: MaxTokens = None, temperature: Temperature = None) -> None:
    """Ask a model (POST /v4/chat-completions) and print its answer."""
    body = chat_body(question, model, system, max_tokens, temperature)
    client = api()
    if not stream:
        out(chunk_text(client.post("/v4/chat-completions", json=body)))
        return
    body["stream"] = True
    text = ""
    try:
        with client.stream("POST", "/v4/chat-completions", json=body) as response:
            client.check(response)
            for event in iter_sse(response):
                if event.event == "error":
                    if text:
                        out()
                    fail(error_text(event_json(event.data)))
                if event.event not in ("message", "", None):
                    continue
                piece = chunk_text(event_json(event.data))
                text += piece
                out(piece, end="")
    except httpx.TransportError as exc:
        if text:
            out()
        fail(transport_message(exc, client.base_url))
    except StreamUnavailable as exc:
        fail(f"the server did not answer with a stream: {exc}")
    out()
