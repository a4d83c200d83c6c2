"""OpenAI's chat-completions wire format, mapped onto the fleet's requests, jobs and events.

A request (``ChatRequest``) becomes the same door-neutral request an SGP one does
(``to_request``), with OpenAI's semantics where they differ: temperature 0-2 (each model refuses
what it cannot take) and 1 when unset, ``max_completion_tokens`` or ``max_tokens``, ``stop`` as a
string or a list, ``developer`` messages as system ones. A parameter the fleet does not serve (tools, logprobs,
``n`` other than 1, ...) is a 400 that names it: nothing is dropped silently. The answer
(``OpenAIAnswer``) is OpenAI's: a ``chat.completion``, or ``chat.completion.chunk`` events ending with
``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from api.completion import Answer
from api.failures import failure_status
from api.openai.errors import error_body, error_response
from api.request import (
    MAX_INTEGER,
    CompletionRequest,
    MaxTokens,
    Parameters,
    Penalty,
    Seed,
    StopSequences,
    TopP,
    check_unicode,
)
from shared.jobspec import ReasoningEffort, Turn

SYSTEM_FINGERPRINT = "fp_chatfleet"
DEFAULT_TEMPERATURE = 1.0  # OpenAI's


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    _valid_unicode = field_validator("content")(classmethod(lambda cls, value: check_unicode(value)))

    def to_turn(self) -> Turn:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return Turn("system" if self.role == "developer" else self.role, text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


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
        return self

    def to_request(self) -> CompletionRequest:
        """The door-neutral request (each model's own limits, such as its highest temperature,
        are checked when it is submitted)."""
        parameters = Parameters(
            temperature=self.temperature, max_tokens=self.max_completion_tokens or self.max_tokens,
            stop_sequences=tuple(self.stop) if self.stop is not None else None, top_p=self.top_p,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            reasoning_effort=self.reasoning_effort, seed=self.seed)
        return CompletionRequest(model=self.model, messages=tuple(m.to_turn() for m in self.messages),
                                 default_temperature=DEFAULT_TEMPERATURE, parameters=parameters,
                                 stream=bool(self.stream))


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
    return {
        "id": completion_id(job_id), "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion["message"]["content"],
                                             "refusal": None},
                     "logprobs": None, "finish_reason": completion["finish_reason"]}],
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
        finish = completion["finish_reason"]
        out = b""
        if not self.started:  # as OpenAI's streams begin: the role, no text yet
            self.started = True
            out += sse_data(self._chunk({"role": "assistant", "content": ""}))
        if text:
            out += sse_data(self._chunk({"content": text}))
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

    def stream_end(self):
        return b"data: [DONE]\n\n"
