"""Tool calls and structured answers for the families that take a raw prompt (the local model,
LLM-Engine/vLLM), by constrained decoding: the answer is JSON that a schema bounds, token by
token (llama.cpp turns the schema into a grammar; vLLM its structured outputs), so it always
parses and validates.

Both sides of the queue must agree on the answer's shape, so it is stated here once: the API
tells the model in the prompt (``prompt_turns``), the worker constrains decoding to
``answer_schema`` and reads the answer back (``read_answer``). With tools, the answer is
``{"tool_calls": [{"name", "arguments"}]}`` or, when the model may answer instead
(``tool_choice: auto``), ``{"content": ...}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from shared.jobspec import Output, Tools, Turn

#: The most calls one constrained answer makes when the client allows parallel calls: a small model
#: let make any number makes the same call over and over, to the token bound.
PARALLEL_CALLS_AT_MOST = 4


def _declared_only(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema that lists its properties, closed to any other: whatever this admits,
    ``schema`` admits too, and a small model let add any key fills the object with made-up ones."""
    if "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def _rebased(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema``, to be nested inside the answer's schema: its ``$defs`` (and ``definitions``)
    moved to ``defs`` under ``prefix``, its ``$ref``s rewritten to point there (a ref resolves
    from the root, which is the answer's schema once nested)."""
    own = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    renamed = {name: prefix + name for name in own}

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key == "$ref" and isinstance(item, str):
                    for old in ("#/$defs/", "#/definitions/"):
                        if item.startswith(old) and item[len(old):].split("/")[0] in renamed:
                            name, _, rest = item[len(old):].partition("/")
                            item = "#/$defs/" + renamed[name] + ("/" + rest if rest else "")
                    if item == "#":
                        item = "#/$defs/" + prefix + "root"
                out[key] = rewrite(item) if key != "$ref" else item
            return out
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    body = {k: v for k, v in schema.items() if k not in ("$defs", "definitions", "$schema")}
    for name, sub in own.items():
        defs[renamed[name]] = rewrite(sub)
    rebased: dict[str, Any] = rewrite(body)
    if any(ref == "#" for ref in _refs(schema)):
        defs[prefix + "root"] = rebased
    return rebased


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [value["$ref"]] if isinstance(value.get("$ref"), str) else [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    arguments = _declared_only(parameters or {"type": "object"})
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}


def _signature(name: str, parameters: dict[str, Any]) -> str:
    """A function as the prompt names it, ``get_weather(city: string, days?: integer)``: a small
    model shown a JSON Schema copies its words into the call."""
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or ())
    args = []
    for arg, schema in properties.items():
        kind = schema.get("type", "value") if isinstance(schema, dict) else "value"
        args.append(f"{arg}{'' if arg in required else '?'}: {'|'.join(kind) if isinstance(kind, list) else kind}")
    return f"{name}({', '.join(args)})"


def _content_schema(output: Output | None) -> dict[str, Any]:
    if output is None:
        return {"type": "string"}
    return _declared_only(output.schema) if output.schema is not None else {"type": "object"}


def answer_schema(tools: Tools | None, output: Output | None) -> dict[str, Any] | None:
    """The JSON Schema the answer is constrained to; None: free text."""
    if tools is not None and tools.choice != "none":
        defs: dict[str, Any] = {}
        functions = [f for f in tools.functions if tools.forced is None or f.name == tools.forced]
        calls = [_call_schema(f.name, _rebased(f.parameters, f"f{i}_", defs)) for i, f in enumerate(functions)]
        items: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
        array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
        # One call unless the client asks for several (a few, at most).
        array["maxItems"] = PARALLEL_CALLS_AT_MOST if tools.parallel is True and tools.forced is None else 1
        with_calls = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"],
                      "additionalProperties": False}
        if tools.choice == "required":
            return {**with_calls, "$defs": defs} if defs else with_calls
        content = _content_schema(output)
        if output is not None and output.schema is not None:
            content = _rebased(content, "answer_", defs)
        answer = {"type": "object", "properties": {"content": content}, "required": ["content"],
                  "additionalProperties": False}
        return {"anyOf": [with_calls, answer], **({"$defs": defs} if defs else {})}
    if output is not None:
        return _content_schema(output)
    return None


def _instructions(tools: Tools | None, output: Output | None) -> str:
    lines: list[str] = []
    if tools is not None and tools.choice != "none":
        functions = [f for f in tools.functions if tools.forced is None or f.name == tools.forced]
        lines.append("You can call these functions:")
        for f in functions:
            described = f": {f.description}" if f.description else ""
            lines.append(f"- {_signature(f.name, f.parameters)}{described}")
        lines.append('To call functions, answer with JSON: {"tool_calls": [{"name": ..., "arguments": {...}}]}.')
        if tools.choice == "auto":
            what = "a JSON value as described below" if output is not None else "your answer as a string"
            lines.append(f'To answer without calling a function, answer with JSON: {{"content": {what}}}.')
        else:
            lines.append("You must call " + (f"the function {tools.forced}." if tools.forced else "a function."))
    # A structured answer alone is left to the grammar: a small model shown the schema copies its
    # words into the answer instead of answering.
    return "\n".join(lines)


def _turn_text(turn: Turn) -> tuple[str, str]:
    """A turn as plain text for a chat template: tool calls as the JSON the model answers with,
    a tool's result as a user turn that says which call it answers."""
    if turn.role == "tool":
        return "user", f"Result of the function {turn.name} (call {turn.tool_call_id}): {turn.content}"
    if turn.tool_calls:
        calls = [{"name": c.name, "arguments": _loads_or_text(c.arguments)} for c in turn.tool_calls]
        text = orjson.dumps({"tool_calls": calls}).decode()
        return turn.role, (turn.content + "\n" + text) if turn.content else text
    return turn.role, turn.content


def prompt_turns(turns: list[Turn], tools: Tools | None, output: Output | None) -> list[dict[str, str]]:
    """The turns as a chat template renders them (``{"role", "content"}``), the instructions for
    the answer's shape in the system turn."""
    messages = [dict(zip(("role", "content"), _turn_text(t))) for t in turns]
    instructions = _instructions(tools, output)
    if instructions:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = (messages[0]["content"] + "\n\n" + instructions).strip()
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return messages


def _loads_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@dataclass
class Answer:
    """A constrained answer read back: its text (``content``) and the calls it makes, each
    (name, arguments as JSON text)."""

    content: str
    calls: list[tuple[str, str]]


_CONTENT_START = re.compile(r'\s*\{\s*"content"\s*:\s*"')


def cut_content(text: str) -> str | None:
    """The text of an answer ``{"content": "...`` that the token bound cut short: the string so
    far, unescaped (None if ``text`` is not such an answer)."""
    start = _CONTENT_START.match(text)
    if start is None:
        return None
    rest = text[start.end():]
    end = 0
    while end < len(rest) and rest[end] != '"':
        end += 2 if rest[end] == "\\" else 1
    piece = rest[:min(end, len(rest))]
    while piece:
        try:
            value = orjson.loads('"' + piece + '"')
            return value if isinstance(value, str) else None
        except orjson.JSONDecodeError:
            piece = piece[:-1]  # an escape cut in two
    return ""


def read_answer(text: str, tools: Tools | None, output: Output | None) -> Answer | None:
    """The answer ``text`` gives under ``answer_schema``; None when it is no such answer (cut
    short by the token bound)."""
    if tools is None or tools.choice == "none":
        return Answer(text, [])
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("tool_calls"), list):
        calls: list[tuple[str, str]] = []
        for call in value["tool_calls"]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return None
            made = (call["name"], orjson.dumps(call.get("arguments", {})).decode())
            if made not in calls:  # the same call twice is a small model repeating itself
                calls.append(made)
        return Answer("", calls)
    if "content" in value:
        content = value["content"]
        return Answer(content if isinstance(content, str) else orjson.dumps(content).decode(), [])
    return None
