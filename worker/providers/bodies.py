"""Pieces of provider request bodies that several families share: the optional parameters a
body carries, and the conversation reshaped as chat APIs want it (one system prompt apart,
turns that alternate, none empty)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import orjson

from shared.jobspec import Output, Tools, Turn
from worker.providers.base import ToolCallDelta


def job_seed(job_id: str) -> int:
    """A seed fixed per job, so that a retried call is as close to the first as the provider allows."""
    return zlib.crc32(job_id.encode()) & 0x7FFFFFFF


def given(**fields: Any) -> dict[str, Any]:
    """The ``fields`` that are set (not None): a body's optional parameters, by the provider's names."""
    return {name: value for name, value in fields.items() if value is not None}


def chat_messages(turns: tuple[Turn, ...]) -> list[dict[str, Any]]:
    """The conversation as OpenAI-style chat APIs take it: ``[{"role", "content"}]``, with tool
    calls, tool results and images in OpenAI's shape."""
    return [openai_message(turn) for turn in turns]


def merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``spec.extra`` over ``body``, last; a table in both is merged one level deep, so an
    operator can add e.g. one generation option without restating the others."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def merge_turns(turns: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """(role, text) turns as ``[{"role", "content"}]``, consecutive ones of one role made one
    (joined by a blank line); empty ones are dropped (the APIs refuse empty turns, and they
    carry nothing)."""
    merged: list[dict[str, str]] = []
    for role, text in turns:
        if not text.strip():
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n\n" + text
        else:
            merged.append({"role": role, "content": text})
    return merged


def merge_blocks(turns: Iterable[tuple[str, list[dict[str, Any]]]], field: str = "content") -> list[dict[str, Any]]:
    """(role, blocks) turns as messages that alternate (``{"role", field: blocks}``): a role's
    consecutive turns made one (a tool's results, sent as user turns, with the user's text after
    them); turns without blocks dropped."""
    merged: list[dict[str, Any]] = []
    for role, blocks in turns:
        if not blocks:
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1][field] = merged[-1][field] + blocks
        else:
            merged.append({"role": role, field: list(blocks)})
    return merged


def split_system(turns: tuple[Turn, ...]) -> tuple[str, list[Turn]]:
    system = [m.content for m in turns if m.role == "system" and m.content.strip()]
    return "\n\n".join(system), [m for m in turns if m.role != "system"]


# --- tools, structured outputs, images --------------------------------------------------------


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL (the API checked it); None for an http(s) URL."""
    if not url.startswith("data:"):
        return None
    head, _, data = url.partition(",")
    return head[5:].split(";")[0], data


def arguments_object(arguments: str) -> Any:
    """A tool call's JSON arguments as the object the families that take one want (Anthropic,
    Gemini, Bedrock); text that is no JSON object is kept under ``arguments``."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def openai_message(turn: Turn) -> dict[str, Any]:
    """A turn as OpenAI's chat API (and Mistral's) takes it."""
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content}
    if turn.tool_calls:
        return {"role": "assistant", "content": turn.content or None,
                "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in turn.tool_calls]}
    if turn.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": turn.content}] if turn.content else []
        for image in turn.images:
            parts.append({"type": "image_url", "image_url": given(url=image.url, detail=image.detail)})
        return {"role": turn.role, "content": parts}
    return {"role": turn.role, "content": turn.content}


def openai_tools(tools: Tools | None) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as OpenAI's chat API takes them."""
    if tools is None:
        return {}
    body: dict[str, Any] = {"tools": [
        {"type": "function", "function": given(name=f.name, description=f.description, parameters=f.parameters,
                                               strict=f.strict)} for f in tools.functions]}
    body["tool_choice"] = ({"type": "function", "function": {"name": tools.forced}} if tools.forced
                           else tools.choice)
    if tools.parallel is not None:
        body["parallel_tool_calls"] = tools.parallel
    return body


def openai_response_format(output: Output | None) -> dict[str, Any]:
    if output is None:
        return {}
    if output.type == "json_object":
        return {"response_format": {"type": "json_object"}}
    schema = given(name=output.name, description=output.description, schema=output.schema, strict=output.strict)
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def output_tool(output: Output) -> dict[str, Any]:
    """The tool a family without a JSON mode of its own is made to call to give a structured
    answer (Anthropic, Bedrock): its input is the answer."""
    return {"name": output.name, "description": output.description or "Give the answer, in this shape.",
            "schema": output.schema if output.schema is not None else {"type": "object"}}


def tool_call_pieces(delta: dict[str, Any]) -> list[ToolCallDelta]:
    """Tool calls in an OpenAI-style stream delta (``delta.tool_calls[]``), as ToolCallDelta pieces."""
    out = []
    for i, call in enumerate(delta.get("tool_calls") or ()):
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        index = call.get("index")
        out.append(ToolCallDelta(index if isinstance(index, int) else i, function.get("arguments") or "",
                                 call.get("id") or None, function.get("name") or None))
    return out
