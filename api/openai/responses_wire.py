"""OpenAI's Responses API wire format, on the fleet's jobs: a response is a job (``resp_<hex>``
is ``job_<hex>``), its request kept beside it in the job's record (field ``response``, so it
lives and expires with the job), its status and output read off the job, its stream the job's
events worded as Responses events.

A request (``ResponseRequest``) becomes the door-neutral request a chat completion does: the
input items (messages with text and image parts, ``function_call`` and
``function_call_output`` items) after the conversation a ``previous_response_id`` continues,
``instructions`` first, tools and ``text.format`` as a chat completion's. Events are numbered
(``sequence_number``) as they are worded from the job's events, always the same way, so that a
stream resumed after its N-th event (``starting_after``) goes on exactly where it stopped.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from api.openai.wire import (
    DEFAULT_TEMPERATURE,
    InvalidParameter,
    UnsupportedParameter,
)
from api.request import (
    SERVICE_TIERS,
    AnswerSchema,
    CompletionRequest,
    MaxTokens,
    Parameters,
    ParametersSchema,
    TopP,
    check_image_url,
    check_unicode,
)
from shared.jobspec import Image, Output, ReasoningEffort, Role, Tool, ToolCall, Tools, Turn

MAX_METADATA_KEYS = 16


# --- the request --------------------------------------------------------------------------------


class InputText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None


class InputImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_image"]
    image_url: str
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, value: str) -> str:
        check_image_url(value)
        return value


Part = Annotated[InputText | InputImage, Field(discriminator="type")]


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: list[Part] | str
    id: str | None = None
    status: str | None = None

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str
    id: str | None = None
    status: str | None = None


def _item_kind(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if kind in ("message", "function_call", "function_call_output") else None


# A message item may leave its type out (OpenAI's "easy" input message).
InputItem = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
                      Discriminator(_item_kind, custom_error_type="invalid_item", custom_error_message=(
                          "each input item is a message (role and content), a function_call or a "
                          "function_call_output"))]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=100_000)
    parameters: ParametersSchema | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class FormatText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class FormatJsonObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class FormatJsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: AnswerSchema = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Annotated[FormatText | FormatJsonObject | FormatJsonSchema, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseRequest(BaseModel):
    """``POST /v1/responses``: what the fleet serves of OpenAI's request."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: Annotated[list[InputItem], Field(min_length=1)] | str
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: TopP | None = None
    max_output_tokens: MaxTokens | None = None
    reasoning: Reasoning | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=100)
    stream: bool = False
    background: bool = False
    user: str | None = Field(None, max_length=256)
    truncation: Literal["disabled"] | None = None
    # The account's own work is ordered by it: flex is low, priority high (the others default).
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None

    @model_validator(mode="after")
    def _checked(self) -> ResponseRequest:
        extra = sorted(self.model_extra or {})
        if extra:
            raise UnsupportedParameter(extra[0])
        if self.metadata is not None and len(self.metadata) > MAX_METADATA_KEYS:
            raise InvalidParameter("metadata", f"metadata holds at most {MAX_METADATA_KEYS} keys")
        if self.background and not self.store:
            raise InvalidParameter("background", "a background response must be stored: remove store: false")
        names = [t.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise InvalidParameter("tools", "each function of tools needs its own name")
        if self.tool_choice is not None and not self.tools:
            raise InvalidParameter("tool_choice", "tool_choice is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedFunction) and self.tool_choice.name not in names:
            raise InvalidParameter("tool_choice", f"tool_choice names the function {self.tool_choice.name!r}, "
                                   "which is not one of the tools given")
        return self

    def items(self) -> list[dict[str, Any]]:
        """The input as items (a string is one user message), as ``input_items`` lists them."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": self.input}]}]
        return [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in self.input]

    def tool_use(self) -> Tools | None:
        if not self.tools:
            return None
        functions = tuple(Tool(t.name, t.parameters or {"type": "object", "properties": {}}, t.description, t.strict)
                          for t in self.tools)
        if isinstance(self.tool_choice, NamedFunction):
            return Tools(functions, "required", self.tool_choice.name, self.parallel_tool_calls)
        return Tools(functions, self.tool_choice or "auto", None, self.parallel_tool_calls)

    def output(self) -> Output | None:
        fmt = self.text.format if self.text is not None else None
        if isinstance(fmt, FormatJsonObject):
            return Output("json_object")
        if isinstance(fmt, FormatJsonSchema):
            return Output("json_schema", fmt.name, fmt.schema_, fmt.strict, fmt.description)
        return None

    def to_request(self, history: list[dict[str, Any]]) -> CompletionRequest:
        """The door-neutral request: ``history`` (the items of the conversation this one
        continues), then the input, ``instructions`` first."""
        turns = list(turns_of(history + self.items()))
        if self.instructions is not None:
            turns.insert(0, Turn("system", self.instructions))
        parameters = Parameters(temperature=self.temperature, max_tokens=self.max_output_tokens, top_p=self.top_p,
                                reasoning_effort=self.reasoning.effort if self.reasoning else None)
        return CompletionRequest(model=self.model, messages=tuple(turns), default_temperature=DEFAULT_TEMPERATURE,
                                 parameters=parameters, stream=self.stream, tools=self.tool_use(),
                                 output=self.output(), priority=SERVICE_TIERS[self.service_tier or "auto"])

    def echo(self) -> dict[str, Any]:
        """What a response object repeats of its request."""
        fmt = self.text.format.model_dump(by_alias=True, exclude_none=True) if self.text and self.text.format else None
        return {
            "model": self.model, "instructions": self.instructions, "metadata": self.metadata or {},
            "tools": [t.model_dump(exclude_none=True) for t in self.tools or ()],
            "tool_choice": (self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedFunction)
                            else self.tool_choice or "auto"),
            "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
            "text": {"format": fmt or {"type": "text"}}, "temperature": self.temperature, "top_p": self.top_p,
            "max_output_tokens": self.max_output_tokens, "background": self.background, "store": self.store,
            "previous_response_id": self.previous_response_id, "user": self.user,
            "reasoning": {"effort": self.reasoning.effort if self.reasoning else None, "summary": None},
        }


def _text_of(content: Any) -> tuple[str, tuple[Image, ...]]:
    if isinstance(content, str):
        return content, ()
    text = "".join(p["text"] for p in content if p.get("type") in ("input_text", "output_text"))
    images = tuple(Image(p["image_url"], p.get("detail")) for p in content if p.get("type") == "input_image")
    return text, images


def turns_of(items: list[dict[str, Any]]) -> list[Turn]:
    """Items as the conversation's turns: a function call joins the assistant turn before it
    (or makes one), its output is a ``tool`` turn named after the call; an output that answers
    no call of an earlier item is refused."""
    turns: list[Turn] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        kind = _item_kind(item)
        if kind == "function_call":
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            names[call.id] = call.name
            if turns and turns[-1].role == "assistant" and not turns[-1].images:
                last = turns.pop()
                turns.append(Turn("assistant", last.content, tool_calls=(*last.tool_calls, call)))
            else:
                turns.append(Turn("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            if item["call_id"] not in names:
                raise InvalidParameter(f"input[{i}].call_id", f"input[{i}]: no earlier function_call has the call_id "
                                       f"{item['call_id']!r}")
            turns.append(Turn("tool", item["output"], tool_call_id=item["call_id"], name=names[item["call_id"]]))
        else:
            text, images = _text_of(item["content"])
            role: Role = "system" if item["role"] == "developer" else item["role"]
            turns.append(Turn(role, text, images=images if role == "user" else ()))
    return turns


# --- the response object ------------------------------------------------------------------------


def response_id(job_id: str) -> str:
    return "resp_" + job_id.removeprefix("job_")


def job_id_of(response: str) -> str | None:
    if not response.startswith("resp_") or len(response) > 80:
        return None
    return "job_" + response.removeprefix("resp_")


STATUSES = {"queued": "queued", "throttled": "queued", "running": "in_progress", "cancelling": "in_progress",
            "succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}


def usage_of(token_usage: dict[str, int] | None) -> dict[str, Any] | None:
    if not token_usage:
        return None
    return {"input_tokens": token_usage["prompt"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": token_usage["completion"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": token_usage["total"]}


def output_items(rid: str, text: str, calls: list[dict[str, Any]], status: str = "completed") -> list[dict[str, Any]]:
    """A response's output: its message (when it has text), then its function calls."""
    items: list[dict[str, Any]] = []
    if text:
        items.append(message_item(rid, text, status))
    for i, call in enumerate(calls):
        items.append(call_item(rid, i, call["id"], call["function"]["name"], call["function"]["arguments"], status))
    return items


def message_item(rid: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": "msg_" + rid.removeprefix("resp_"), "status": status, "role": "assistant",
            "content": content}


def call_item(rid: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{rid.removeprefix('resp_')}_{index}", "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def response_object(rid: str, stored: dict[str, Any], status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, error: dict[str, Any] | None = None,
                    incomplete: str | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": stored["created_at"], "status": status,
        "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
        "output": output, "usage": usage, "truncation": "disabled", **stored["echo"],
    }


#: A finish reason that leaves a response incomplete, and the reason it says.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def finished_state(body: dict[str, Any]) -> tuple[str, str | None, str, list[dict[str, Any]]]:
    """(status, incomplete reason, text, calls) of a succeeded job's result."""
    completion = body["chat_completion"]
    incomplete = INCOMPLETE.get(completion.get("finish_reason") or "")
    return ("incomplete" if incomplete else "completed", incomplete, completion["message"]["content"] or "",
            completion["message"].get("tool_calls") or [])


def finished_object(rid: str, stored: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The response object of a succeeded job's result."""
    status, incomplete, text, calls = finished_state(body)
    return response_object(rid, stored, status, output_items(rid, text, calls), usage_of(body.get("token_usage")),
                           incomplete=incomplete)


def stored_record(request: ResponseRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"created_at": int(time.time()), "echo": request.echo(), "input": request.items(), "history": history}



# --- the stream ---------------------------------------------------------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ResponseEvents:
    """A job's events worded as a response's stream events, numbered from 0, the same way each
    time they are worded: a stream resumed ``starting_after`` N words them all again and sends
    those after N."""

    def __init__(self, rid: str, stored: dict[str, Any], after: int = -1):
        self.rid = rid
        self.stored = stored
        self.after = after
        self.seq = -1
        self.items: list[dict[str, Any]] = []  # the output so far (open items are in progress)
        self.message: dict[str, Any] | None = None  # the message item being written
        self.call: dict[str, Any] | None = None  # the function call item being written
        self.calls = 0
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None

    def _emit(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        if self.seq <= self.after:
            return b""
        return sse_event({"type": kind, "sequence_number": self.seq, **fields})

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self.rid, self.stored, status, [dict(i) for i in self.items], self.usage, **extra)

    def begin(self) -> bytes:
        return (self._emit("response.created", response=self._snapshot("queued"))
                + self._emit("response.in_progress", response=self._snapshot("in_progress")))

    def _index(self, item: dict[str, Any]) -> int:
        return self.items.index(item)

    def _close_message(self) -> bytes:
        item = self.message
        if item is None:
            return b""
        self.message = None
        text = item["content"][0]["text"]
        index = self._index(item)
        part = {"type": "output_text", "text": text, "annotations": []}
        item["status"] = "completed"
        return (self._emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                           text=text, logprobs=[])
                + self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                             part=part)
                + self._emit("response.output_item.done", output_index=index, item=dict(item)))

    def _close_call(self) -> bytes:
        item = self.call
        if item is None:
            return b""
        self.call = None
        index = self._index(item)
        item["status"] = "completed"
        return (self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           arguments=item["arguments"], name=item["name"])
                + self._emit("response.output_item.done", output_index=index, item=dict(item)))

    def token(self, data: str) -> bytes:
        chunk = orjson.loads(data)
        completion = chunk["chat_completion"]
        text = completion["message"]["content"]
        pieces = completion["message"].get("tool_calls") or ()
        out = b""
        if text:
            if self.message is None:
                out += self._close_call()
                self.message = message_item(self.rid, "", "in_progress")
                self.items.append(self.message)
                index = self._index(self.message)
                out += self._emit("response.output_item.added", output_index=index,
                                  item={**self.message, "content": []})
                out += self._emit("response.content_part.added", item_id=self.message["id"], output_index=index,
                                  content_index=0, part={"type": "output_text", "text": "", "annotations": []})
            self.message["content"][0]["text"] += text
            out += self._emit("response.output_text.delta", item_id=self.message["id"],
                              output_index=self._index(self.message), content_index=0, delta=text, logprobs=[])
        for piece in pieces:
            function = piece.get("function") or {}
            if piece.get("id"):
                out += self._close_message() + self._close_call()
                self.call = call_item(self.rid, self.calls, piece["id"], function.get("name") or "", "", "in_progress")
                self.calls += 1
                self.items.append(self.call)
                out += self._emit("response.output_item.added", output_index=self._index(self.call),
                                  item=dict(self.call))
            if self.call is not None and function.get("arguments"):
                self.call["arguments"] += function["arguments"]
                out += self._emit("response.function_call_arguments.delta", item_id=self.call["id"],
                                  output_index=self._index(self.call), delta=function["arguments"])
        if chunk.get("token_usage"):
            self.usage = usage_of(chunk["token_usage"])
            self.finish = completion.get("finish_reason")
        return out

    def end(self, status: str) -> bytes:
        """The job ended (``status``: succeeded or cancelled)."""
        out = self._close_message() + self._close_call()
        if status != "succeeded":
            return out + self._emit("response.cancelled", response=self._snapshot("cancelled"))
        incomplete = INCOMPLETE.get(self.finish or "")
        if incomplete:
            return out + self._emit("response.incomplete", response=self._snapshot("incomplete",
                                                                                  incomplete=incomplete))
        return out + self._emit("response.completed", response=self._snapshot("completed"))

    def error(self, data: str) -> bytes:
        error = orjson.loads(data)
        out = self._close_message() + self._close_call()
        failure = {"code": error.get("code") or "server_error", "message": error.get("message") or "the job failed"}
        return out + self._emit("response.failed", response=self._snapshot("failed", error=failure))
