"""The SGP v4 "Create Chat Completion" request (``../shared/docs/sgp-chat-completions.md``):
validated as the contract states it, and made the fleet's door-neutral request (``to_request``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from api.request import (
    MAX_INTEGER,
    CompletionRequest,
    MaxTokens,
    Parameters,
    Penalty,
    Priority,
    Seed,
    StopSequences,
    TopK,
    TopP,
    check_unicode,
)
from shared.jobspec import ReasoningEffort, Turn

MAX_CHAT_TEMPLATE_CHARS = 10_000
DEFAULT_TEMPERATURE = 0.2  # the contract's


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = "text"
    text: str


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
    def _valid_unicode(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        return check_unicode(value)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class LastKParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(ge=1, le=MAX_INTEGER)


class MemoryStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["last_k"] = "last_k"
    params: LastKParams


class ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: MaxTokens | None = None
    stop_sequences: StopSequences | None = None
    top_k: TopK | None = Field(None, validation_alias=AliasChoices("topK", "top_k"), serialization_alias="topK")
    top_p: TopP | None = Field(None, validation_alias=AliasChoices("topP", "top_p"), serialization_alias="topP")
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    reasoning_effort: ReasoningEffort | None = None
    # Sampling seed, for the families whose API takes one.
    seed: Seed | None = None

    def to_parameters(self) -> Parameters:
        return Parameters(
            temperature=self.temperature, max_tokens=self.max_tokens,
            stop_sequences=tuple(self.stop_sequences) if self.stop_sequences is not None else None,
            top_k=self.top_k, top_p=self.top_p, frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, reasoning_effort=self.reasoning_effort, seed=self.seed)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[Message], Field(min_length=1)]
    model: str = Field(min_length=1, max_length=200)
    account_id: str | None = None
    instructions: str | None = None
    memory_strategy: MemoryStrategy | None = None
    # The fleet's own: where the job goes among the account's own work (high, default, low).
    priority: Priority = "default"
    model_parameters: ModelParameters | None = None
    chat_template: str | None = Field(None, max_length=MAX_CHAT_TEMPLATE_CHARS)
    stream: bool = False

    def to_request(self) -> CompletionRequest:
        return CompletionRequest(
            model=self.model, messages=tuple(Turn(m.role, m.text()) for m in self.messages),
            default_temperature=DEFAULT_TEMPERATURE,
            parameters=self.model_parameters.to_parameters() if self.model_parameters else Parameters(),
            account_id=self.account_id, instructions=self.instructions,
            last_k=self.memory_strategy.params.k if self.memory_strategy else None,
            chat_template=self.chat_template, stream=self.stream, priority=self.priority)
