"""OpenAI's chat-completions wire format, mapped onto the fleet's requests, jobs and events.

A request (``ChatRequest``) becomes the same job an SGP request would (``to_fleet``), with
OpenAI's semantics where they differ: temperature 0-2 (each model refuses what it cannot take)
and 1 when unset, ``max_completion_tokens`` or ``max_tokens``, ``stop`` as a string or a list,
``developer`` messages as system ones. A parameter the fleet does not serve (tools, logprobs,
``n`` other than 1, ...) is a 400 that names it: nothing is dropped silently. The answer
(``OpenAIAnswer``) is OpenAI's: a ``chat.completion``, or ``chat.completion.chunk`` events ending with
``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fastapi.responses import JSONResponse

from api.completion import ERROR_STATUS, Answer
from api.openai.errors import error_body, error_response
from shared.schemas import MAX_STOP_SEQUENCES, ChatCompletionRequest, Message, ModelParameters, check_unicode

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

    def to_fleet(self) -> Message:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return Message.model_construct(role="system" if self.role == "developer" else self.role, content=text)


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
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = Field(None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

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

    def to_fleet(self) -> ChatCompletionRequest:
        """The SGP request the job is made of (validated here already: the fleet's own limits,
        such as each model's highest temperature, are checked when it is submitted)."""
        given: dict[str, Any] = {
            "temperature": self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE,
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop_sequences": self.stop, "top_p": self.top_p, "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty, "seed": self.seed, "reasoning_effort": self.reasoning_effort,
        }
        parameters = ModelParameters.model_construct(**{k: v for k, v in given.items() if v is not None})
        return ChatCompletionRequest.model_construct(
            messages=[m.to_fleet() for m in self.messages], model=self.model, account_id=None, instructions=None,
            memory_strategy=None, model_parameters=parameters, chat_template=None, stream=bool(self.stream))


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
        return sse_data(error_body(ERROR_STATUS.get(error.get("code"), 502), error.get("message") or "the job failed",
                                   None, error.get("code")))

    def stream_shutdown(self, job_id, seq):
        return sse_data(error_body(
            503, f"this API instance is restarting; the job continues: follow /v4/jobs/{job_id}/stream with "
                 f"Last-Event-ID: {seq}", None, "server_shutting_down"))

    def stream_end(self):
        return b"data: [DONE]\n\n"
