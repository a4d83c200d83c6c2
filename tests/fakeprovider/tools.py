"""Tool calls and structured answers, as the fake's deterministic model makes them.

The fake "calls" a tool whenever it may and the conversation does not end with a tool's result:
the forced one, else the first; its arguments are the smallest instance valid against the
tool's JSON Schema (``example``). A structured answer (a JSON mode or schema) is that instance
of the answer's schema, as text. Each family module reads its own wire format for both and
refuses what its API refuses (``ToolUse.check_*`` helpers raise the family's 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson


def example(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """The smallest value valid against ``schema`` (the keywords tool and answer schemas use:
    type, properties/required, items/minItems, enum, const, anyOf/oneOf, $ref to $defs)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return {}
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind.lower() if isinstance(kind, str) else kind  # Gemini's Schema spells types in capitals
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items") or {}, root, depth + 1) for _ in range(int(schema.get("minItems") or 1))]
    if kind == "string":
        return "tok" * max(1, int(schema.get("minLength") or 1))
    if kind == "integer":
        return int(schema.get("minimum") or 1)
    if kind == "number":
        return float(schema.get("minimum") or 1.5)
    if kind == "boolean":
        return True
    return None


@dataclass
class Call:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def json(self) -> str:
        return orjson.dumps(self.arguments).decode()

    def pieces(self) -> list[str]:
        """The arguments' JSON in two pieces, as streams send them."""
        text = self.json
        half = len(text) // 2
        return [text[:half], text[half:]]


@dataclass
class ToolUse:
    """What a request asks of tools: the functions (name -> schema), the choice, whether the
    conversation ends with a tool result, and the answer's schema."""

    functions: dict[str, Any] = field(default_factory=dict)
    choice: str = "auto"  # auto | required | none
    forced: str | None = None
    after_result: bool = False
    answer_schema: Any = None  # a JSON mode or schema: the answer's text is an instance of it

    def call(self, call_id: str) -> Call | None:
        if not self.functions or self.choice == "none" or (self.after_result and not self.forced):
            return None
        name = self.forced or next(iter(self.functions))
        return Call(call_id, name, example(self.functions[name]))


def answer_text(schema: Any) -> str:
    return orjson.dumps(example(schema)).decode()


def shape(plan: Any, use: ToolUse | None, call_id: str) -> Any:
    """The reply once tools and the answer's shape are applied: a call, a structured answer, or
    the plan as it was."""
    from .generation import Plan

    if use is None:
        return plan
    call = use.call(call_id)
    if call is not None:
        return Plan([], max(1, len(call.json) // 4), "tool_calls", call=call)
    if use.answer_schema is not None:
        text = answer_text(use.answer_schema)
        deltas = [text[i:i + 6] for i in range(0, len(text), 6)]
        return Plan(deltas, len(deltas), "stop")
    return plan


def _named(name: Any) -> bool:
    return isinstance(name, str) and re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name) is not None


MISTRAL_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")


def openai_tool_use(fam: Any, body: dict[str, Any], messages: list[Any], any_choice: bool = False) -> ToolUse | None:
    """OpenAI's (and Mistral's, ``any_choice``: also its 9-character call ids) tools,
    tool_choice, parallel_tool_calls, response_format and tool messages, checked as the API
    checks them."""
    tools, choice, rf = body.get("tools"), body.get("tool_choice"), body.get("response_format")
    functions: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            raise fam.bad_request("Invalid type for 'tools': expected an array of objects.")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise fam.bad_request(f"Missing required parameter: 'tools[{i}].function'.")
            if not _named(function.get("name")):
                raise fam.bad_request(f"Invalid 'tools[{i}].function.name': string does not match pattern.")
            params = function.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, dict):
                raise fam.bad_request(f"Invalid type for 'tools[{i}].function.parameters': expected an object.")
            functions[function["name"]] = params
    if choice is not None and not functions:
        raise fam.bad_request("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                              "specified.")
    if body.get("parallel_tool_calls") is not None and not functions:
        raise fam.bad_request("Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when "
                              "'tools' are specified.")
    kind, forced = "auto", None
    choices = ("none", "auto", "required", "any") if any_choice else ("none", "auto", "required")
    if isinstance(choice, str):
        if choice not in choices:
            raise fam.bad_request(f"Invalid value for 'tool_choice': {choice!r}.")
        kind = "required" if choice == "any" else choice
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in functions:
            raise fam.bad_request("Invalid 'tool_choice': it must name one of the tools.")
        kind, forced = "required", name
    elif choice is not None:
        raise fam.bad_request("Invalid type for 'tool_choice'.")
    schema = None
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise fam.bad_request("Invalid value for 'response_format.type'.")
        if rf["type"] == "json_object":
            schema = {"type": "object"}
        elif rf["type"] == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not _named(spec.get("name")):
                raise fam.bad_request("Missing required parameter: 'response_format.json_schema.name'.")
            schema = spec.get("schema", {"type": "object"})
            if not isinstance(schema, dict):
                raise fam.bad_request("Invalid type for 'response_format.json_schema.schema': expected an object.")
    ids: set[str] = set()
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        for j, call in enumerate(calls or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if (not isinstance(call.get("id"), str) or not isinstance(function, dict)
                    or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str)):
                raise fam.bad_request(f"Invalid 'messages[{i}].tool_calls[{j}]': it needs an id, and a function "
                                      "with a name and arguments as a string.")
            if any_choice and not MISTRAL_CALL_ID.fullmatch(call["id"]):
                raise fam.bad_request(f"Tool call id was {call['id']} but must be a-z, A-Z, 0-9, with a length of 9.")
            ids.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in ids:
            raise fam.bad_request("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                                  "message with 'tool_calls'.")
    if not functions and schema is None:
        return None
    return ToolUse(functions, kind, forced, bool(messages) and messages[-1].get("role") == "tool", schema)


def anthropic_tool_use(fam: Any, body: dict[str, Any], messages: list[Any]) -> ToolUse | None:
    """Anthropic's tools and tool_choice, and the tool_use / tool_result blocks of the history:
    each tool_result must answer a tool_use of the assistant message just before it."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    functions: dict[str, Any] = {}
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or not _named(tool.get("name")):
            raise fam.bad_request(f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise fam.bad_request(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        functions[tool["name"]] = schema
    kind, forced = "auto", None
    if choice is not None:
        ctype = choice.get("type") if isinstance(choice, dict) else None
        if ctype not in ("auto", "any", "tool", "none"):
            raise fam.bad_request("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', "
                                  "'tool', 'none'")
        if not functions:
            raise fam.bad_request("tool_choice may only be specified while providing tools.")
        if ctype == "tool":
            if choice.get("name") not in functions:
                raise fam.bad_request(f"Tool '{choice.get('name')}' not found in provided tools")
            forced = choice["name"]
        kind = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}[ctype]
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        for block in results:
            if block.get("tool_use_id") not in previous_uses:
                raise fam.bad_request(f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                                      f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                                      "corresponding `tool_use` block in the previous message.")
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "image":
                source = block.get("source") or {}
                if source.get("type") not in ("base64", "url") or (
                        source.get("type") == "base64" and not (source.get("media_type") and source.get("data"))):
                    raise fam.bad_request(f"messages.{i}.content: an image block needs a base64 or url source")
            if isinstance(block, dict) and block.get("type") == "tool_use" and not isinstance(block.get("input"), dict):
                raise fam.bad_request(f"messages.{i}.content: tool_use.input: Input should be a valid dictionary")
        previous_uses = {b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"}
    if not functions:
        return None
    last = messages[-1].get("content") if messages else None
    after = isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last)
    return ToolUse(functions, kind, forced, after)


def _field(d: Any, camel: str, snake: str) -> Any:
    # proto3 JSON takes both lowerCamelCase and snake_case names (google-genai sends some of each)
    return d.get(camel, d.get(snake)) if isinstance(d, dict) else None


# The fields of Gemini's Schema (OpenAPI 3.0's subset); anything else in ``parameters`` or
# ``responseSchema`` is refused, as the API refuses an unknown name.
GEMINI_SCHEMA_FIELDS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties", "required",
    "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
    "default", "items", "minimum", "maximum", "max_items", "min_items", "property_ordering", "any_of"})


def gemini_schema_check(fam: Any, schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in GEMINI_SCHEMA_FIELDS:
            raise fam.bad_request(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': '
                                  "Cannot find field.")
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                gemini_schema_check(fam, sub, f"{where}.properties[{name}].value")
        elif key == "items":
            gemini_schema_check(fam, value, f"{where}.items")
        elif key in ("anyOf", "any_of") and isinstance(value, list):
            for i, sub in enumerate(value):
                gemini_schema_check(fam, sub, f"{where}.any_of[{i}]")


def gemini_tool_use(fam: Any, body: dict[str, Any], config: dict[str, Any], contents: list[Any]) -> ToolUse | None:
    """Gemini's functionDeclarations, toolConfig and JSON mode (responseMimeType with
    responseSchema or responseJsonSchema, never both)."""
    functions: dict[str, Any] = {}
    for i, tool in enumerate(body.get("tools") or ()):
        for j, decl in enumerate(_field(tool, "functionDeclarations", "function_declarations") or ()):
            if not _named(decl.get("name")):
                raise fam.bad_request(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: "
                                      "Invalid function name.")
            as_json = _field(decl, "parametersJsonSchema", "parameters_json_schema")
            if "parameters" in decl and as_json is not None:
                raise fam.bad_request("parameters and parameters_json_schema cannot both be set")
            gemini_schema_check(fam, decl.get("parameters"), f"tools[{i}].function_declarations[{j}].parameters")
            functions[decl["name"]] = as_json or decl.get("parameters") or {"type": "object"}
    calling = _field(_field(body, "toolConfig", "tool_config") or {}, "functionCallingConfig",
                     "function_calling_config") or {}
    mode = calling.get("mode", "AUTO")
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        raise fam.bad_request(f"Invalid value at 'tool_config.function_calling_config.mode', {mode!r}")
    allowed = _field(calling, "allowedFunctionNames", "allowed_function_names") or []
    if allowed and mode != "ANY":
        raise fam.bad_request("allowed_function_names may be set only when the mode is ANY")
    as_json = _field(config, "responseJsonSchema", "response_json_schema")
    openapi = _field(config, "responseSchema", "response_schema")
    mime = _field(config, "responseMimeType", "response_mime_type")
    if as_json is not None and openapi is not None:
        raise fam.bad_request("response_schema and response_json_schema cannot both be set")
    gemini_schema_check(fam, openapi, "generation_config.response_schema")
    schema = as_json if as_json is not None else openapi
    if schema is not None and mime != "application/json":
        raise fam.bad_request("response_schema requires response_mime_type to be application/json")
    if mime == "application/json" and schema is None:
        schema = {"type": "object"}
    if not functions and schema is None:
        return None
    last = contents[-1].get("parts") if contents and isinstance(contents[-1], dict) else None
    after = isinstance(last, list) and any(isinstance(p, dict) and ("functionResponse" in p or "function_response" in p)
                                           for p in last)
    kind = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}[mode]
    return ToolUse(functions, kind, allowed[0] if len(allowed) == 1 else None, after, schema)


def bedrock_tool_use(fam: Any, body: dict[str, Any], messages: list[Any]) -> ToolUse | None:
    """Converse's toolConfig, and toolUse / toolResult blocks (which need a toolConfig)."""
    config = body.get("toolConfig")
    uses = any(isinstance(b, dict) and ("toolUse" in b or "toolResult" in b)
               for m in messages for b in (m.get("content") or ()))
    if config is None:
        if uses:
            raise fam.bad_request("The toolConfig field must be defined when using toolUse and toolResult content "
                                  "blocks.")
        return None
    functions: dict[str, Any] = {}
    for i, tool in enumerate(config.get("tools") or ()):
        spec = (tool or {}).get("toolSpec") or {}
        schema = (spec.get("inputSchema") or {}).get("json")
        if not _named(spec.get("name")) or not isinstance(schema, dict):
            raise fam.bad_request(f"Value at 'toolConfig.tools.{i + 1}.member.toolSpec' failed to satisfy "
                                  "constraint: it needs a name and an inputSchema.json")
        functions[spec["name"]] = schema
    choice = config.get("toolChoice") or {"auto": {}}
    kind, forced = "auto", None
    if "any" in choice:
        kind = "required"
    elif "tool" in choice:
        forced = (choice["tool"] or {}).get("name")
        if forced not in functions:
            raise fam.bad_request("The tool named in toolChoice is not one of the tools")
        kind = "required"
    elif "auto" not in choice:
        raise fam.bad_request("toolChoice must be one of auto, any, tool")
    last = messages[-1].get("content") if messages else None
    after = isinstance(last, list) and any(isinstance(b, dict) and "toolResult" in b for b in last)
    return ToolUse(functions, kind, forced, after)
