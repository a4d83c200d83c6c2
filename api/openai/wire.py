"""OpenAI's chat-completions wire format, mapped onto the fleet's requests, jobs and events.

A request (``ChatRequest``) becomes the same door-neutral request an SGP one does
(``to_request``), with OpenAI's semantics where they differ: temperature 0-2 (each model refuses
what it cannot take) and 1 when unset, ``max_completion_tokens`` or ``max_tokens``, ``stop`` as a
string or a list, ``developer`` messages as system ones; ``tools`` (with ``tool_choice`` and
``parallel_tool_calls``), tool calls and tool results in the history, ``response_format``, and
``image_url`` parts. A parameter the fleet does not serve (logprobs, ``n`` other than 1, ...) is a
400 that names it: nothing is dropped silently. The answer
(``OpenAIAnswer``) is OpenAI's: a ``chat.completion``, or ``chat.completion.chunk`` events ending with
``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec
import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from api.completion import Answer
from api.failures import failure_status
from api.openai.errors import error_body, error_response
from api.request import (
    MAX_INTEGER,
    SERVICE_TIERS,
    AnswerSchema,
    CompletionRequest,
    MaxTokens,
    Parameters,
    ParametersSchema,
    Penalty,
    Seed,
    StopSequences,
    TopP,
    check_image_url,
    check_unicode,
)
from shared.jobspec import Image, Output, ReasoningEffort, Tool, ToolCall, Tools, Turn

SYSTEM_FINGERPRINT = "fp_chatfleet"
DEFAULT_TEMPERATURE = 1.0  # OpenAI's


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _image_url(cls, value: str) -> str:
        check_image_url(value)
        return value


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


class SystemMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer"]
    content: list[TextPart] | str
    name: str | None = None

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))

    def to_turn(self) -> Turn:
        return Turn("system", _text(self.content))


class UserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user"]
    content: list[UserPart] | str
    name: str | None = None

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))

    def to_turn(self) -> Turn:
        images = () if isinstance(self.content, str) else tuple(
            Image(p.image_url.url, p.image_url.detail) for p in self.content if isinstance(p, ImagePart))
        return Turn("user", _text(self.content), images=images)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class ToolCallMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["assistant"]
    content: list[AssistantPart] | str | None = None
    tool_calls: list[ToolCallMessage] | None = None
    refusal: str | None = None
    name: str | None = None

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.refusal is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    def to_turn(self) -> Turn:
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        return Turn("assistant", _text(self.content), tool_calls=calls)


class ToolMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["tool"]
    content: list[TextPart] | str
    tool_call_id: str = Field(min_length=1, max_length=256)

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))

    def to_turn(self) -> Turn:
        return Turn("tool", _text(self.content), tool_call_id=self.tool_call_id)


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


def named_turns(messages: list[Any]) -> tuple[Turn, ...]:
    """The conversation as turns, each tool result named after the call it answers (some
    families want the function's name with its result); a result that answers no call of an
    earlier assistant message is refused, as OpenAI refuses it."""
    names: dict[str, str] = {}
    turns = []
    for i, message in enumerate(messages):
        turn = message.to_turn()
        for call in turn.tool_calls:
            names[call.id] = call.name
        if turn.role == "tool":
            if turn.tool_call_id not in names:
                raise InvalidParameter(f"messages[{i}].tool_call_id",
                    f"messages[{i}]: a message with role 'tool' must answer a tool call of an earlier assistant "
                    f"message, and no earlier message made a call with id {turn.tool_call_id!r}")
            turn = msgspec.structs.replace(turn, name=names[turn.tool_call_id])
        turns.append(turn)
    return tuple(turns)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=100_000)
    parameters: ParametersSchema | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: AnswerSchema | None = Field(None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: what the fleet serves of OpenAI's request."""

    # Unknown fields are kept to be refused by name (see ``_refuse_unsupported``).
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    # A string is one stop sequence.
    stop: Annotated[StopSequences, BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] | None = None
    n: int | None = Field(None, ge=1, le=MAX_INTEGER)
    seed: Seed | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    reasoning_effort: ReasoningEffort | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The account's own work is ordered by it: flex is low, priority high (the others default).
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported: each request gives one choice")
        return value

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatRequest:
        extra = sorted(self.model_extra or {})
        if extra:
            raise UnsupportedParameter(extra[0])
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        named_turns(self.messages)  # every tool result answers a call
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise InvalidParameter("tools", "each function of tools needs its own name")
        if self.tool_choice is not None and not self.tools:
            raise InvalidParameter("tool_choice", "tool_choice is only allowed when tools are given")
        if self.parallel_tool_calls is not None and not self.tools:
            raise InvalidParameter("parallel_tool_calls", "parallel_tool_calls is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise InvalidParameter("tool_choice", f"tool_choice names the function {self.tool_choice.function.name!r}, "
                                   "which is not one of the tools given")
        return self

    def tool_use(self) -> Tools | None:
        if not self.tools:
            return None
        functions = tuple(Tool(t.function.name, t.function.parameters or {"type": "object", "properties": {}},
                               t.function.description, t.function.strict) for t in self.tools)
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return Tools(functions, "required", choice.function.name, self.parallel_tool_calls)
        return Tools(functions, choice or "auto", None, self.parallel_tool_calls)

    def output(self) -> Output | None:
        fmt = self.response_format
        if isinstance(fmt, JsonObjectFormat):
            return Output("json_object")
        if isinstance(fmt, JsonSchemaFormat):
            spec = fmt.json_schema
            return Output("json_schema", spec.name, spec.schema_ or {"type": "object"}, spec.strict,
                          spec.description)
        return None

    def to_request(self) -> CompletionRequest:
        """The door-neutral request (each model's own limits, such as its highest temperature,
        are checked when it is submitted)."""
        parameters = Parameters(
            temperature=self.temperature, max_tokens=self.max_completion_tokens or self.max_tokens,
            stop_sequences=tuple(self.stop) if self.stop is not None else None, top_p=self.top_p,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            reasoning_effort=self.reasoning_effort, seed=self.seed)
        return CompletionRequest(model=self.model, messages=named_turns(self.messages),
                                 default_temperature=DEFAULT_TEMPERATURE, parameters=parameters,
                                 stream=bool(self.stream), tools=self.tool_use(), output=self.output(),
                                 priority=SERVICE_TIERS[self.service_tier or "auto"])


class InvalidParameter(ValueError):
    """A parameter the request gives wrong, named (``param``)."""

    code = "invalid_value"

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.param = name


class UnsupportedParameter(ValueError):
    """A parameter of OpenAI's API the fleet does not serve."""

    def __init__(self, name: str):
        super().__init__(f"{name} is not supported by this API: remove it")
        self.param = name


# --- answers ------------------------------------------------------------------------------------


def completion_id(job_id: str) -> str:
    return "chatcmpl-" + job_id.removeprefix("job_")


def usage(token_usage: dict[str, int] | None) -> dict[str, int] | None:
    if not token_usage:
        return None
    return {"prompt_tokens": token_usage["prompt"], "completion_tokens": token_usage["completion"],
            "total_tokens": token_usage["total"]}


def completion_object(job_id: str, model: str, created: int, body: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` from a succeeded job's SGP result."""
    completion = body["chat_completion"]
    calls = completion["message"].get("tool_calls")
    content = completion["message"]["content"]
    message: dict[str, Any] = {"role": "assistant", "content": None if calls and not content else content,
                               "refusal": completion["message"].get("refusal")}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id(job_id), "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": completion["finish_reason"]}],
        "usage": usage(body.get("token_usage")),
    }


def sse_data(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


class OpenAIAnswer(Answer):
    route = "/v1/chat/completions"
    fails_before_streaming = True  # as OpenAI: a refused request is a 4xx, streamed or not

    def __init__(self, job_model: str, include_usage: bool):
        self.model = job_model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.started = False

    def failure(self, status, message, code=None, headers=None, **extra):
        return error_response(status, message, None, code, headers)

    def result(self, body, headers):
        return JSONResponse(completion_object(self.job_id, self.model, self.created, body), headers=headers)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {"id": completion_id(self.job_id), "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "system_fingerprint": SYSTEM_FINGERPRINT,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def stream_token(self, data):
        event = orjson.loads(data)
        completion = event["chat_completion"]
        text = completion["message"]["content"]
        calls = completion["message"].get("tool_calls")
        finish = completion["finish_reason"]
        out = b""
        if not self.started:  # as OpenAI's streams begin: the role, no text yet
            self.started = True
            out += sse_data(self._chunk({"role": "assistant", "content": ""}))
        if text:
            out += sse_data(self._chunk({"content": text}))
        if calls:
            out += sse_data(self._chunk({"tool_calls": calls}))
        if finish is not None:
            out += sse_data(self._chunk({}, finish))
            if self.include_usage:
                out += sse_data({**self._chunk({}), "choices": [], "usage": usage(event.get("token_usage"))})
        return out

    def stream_error(self, data):
        error = orjson.loads(data)
        return sse_data(error_body(failure_status(error.get("code")), error.get("message") or "the job failed",
                                   None, error.get("code")))

    def stream_shutdown(self, job_id, seq):
        return sse_data(error_body(
            503, f"this API instance is restarting; the job continues: follow /v4/jobs/{job_id}/stream with "
                 f"Last-Event-ID: {seq}", None, "server_shutting_down"))

    def stream_end(self, data=""):
        return b"data: [DONE]\n\n"
