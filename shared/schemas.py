"""Wire schemas of the SGP v4 chat-completion contract, and of our job resources."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4
MAX_CHAT_TEMPLATE_CHARS = 10_000


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = "text"
    text: str


def check_unicode(content: str | list) -> str | list:
    """``content`` (a string, or text parts), if it is text UTF-8 can carry (no lone surrogate)."""
    for text in ([content] if isinstance(content, str) else [p.text for p in content]):
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("content is not valid Unicode text (it has a lone surrogate)") from None
    return content


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"] = "user"
    # The SDK also allows a list of content parts; text parts are joined, other parts are
    # refused by validation with a message saying so.
    content: str | list[TextPart]

    @field_validator("role", mode="before")
    @classmethod
    def _missing_role_is_user(cls, value: Any) -> Any:
        return "user" if value is None else value

    @field_validator("content")
    @classmethod
    def _valid_unicode(cls, value):
        return check_unicode(value)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class LastKParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(ge=1)


class MemoryStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["last_k"] = "last_k"
    params: LastKParams


class ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    top_k: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("topK", "top_k"), serialization_alias="topK"
    )
    top_p: float | None = Field(
        None, gt=0, le=1, validation_alias=AliasChoices("topP", "top_p"), serialization_alias="topP"
    )
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    # Sampling seed, for the families whose API takes one (the OpenAI front door passes it).
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)

    @field_validator("stop_sequences")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    def given(self) -> set[str]:
        """Names of the parameters the client actually set."""
        return {name for name, value in self.__dict__.items() if value is not None}


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[Message], Field(min_length=1)]
    model: str = Field(min_length=1, max_length=200)
    account_id: str | None = None
    instructions: str | None = None
    memory_strategy: MemoryStrategy | None = None
    model_parameters: ModelParameters | None = None
    chat_template: str | None = Field(None, max_length=MAX_CHAT_TEMPLATE_CHARS)
    stream: bool = False


# --- responses ----------------------------------------------------------------------------


def iso(ts: str | float | None) -> str | None:
    """A unix time (as stored in Redis) as the API shows times: ISO 8601, UTC, milliseconds."""
    if ts in (None, ""):
        return None
    return (
        datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def token_usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt": prompt, "completion": completion, "total": prompt + completion}


def completion_body(
    content: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The non-streaming response body."""
    return {
        "chat_completion": {
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        },
        "token_usage": token_usage(prompt_tokens, completion_tokens),
    }


def stream_chunk(
    delta: str,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> dict[str, Any]:
    """One streamed chunk: the chat shape plus the completions-API shape the SDK declares."""
    final = prompt_tokens is not None and completion_tokens is not None
    chunk: dict[str, Any] = {
        "chat_completion": {
            "message": {"role": "assistant", "content": delta},
            "finish_reason": finish_reason,
        },
        "token_usage": token_usage(prompt_tokens, completion_tokens) if final else None,
        "completions": [["", [delta]]],
        "finish_reason": finish_reason,
    }
    if final:
        chunk["prompt_tokens"] = prompt_tokens
        chunk["response_tokens"] = completion_tokens
    return chunk


JobStatus = Literal["queued", "running", "throttled", "cancelling", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
