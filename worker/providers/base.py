"""What every provider adapter implements: stream a completion as text deltas, then usage."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shared.catalog import ModelSpec
from shared.jobspec import JobSpec, Output, Sampling, Tools, Turn
from shared.results import ToolCallPiece

#: A piece of a tool call, as adapters yield it (``index``, then ``id`` and ``name`` on its first
#: piece, and pieces of its JSON ``arguments``).
ToolCallDelta = ToolCallPiece


@dataclass
class GenerationRequest:
    """One provider call: the job's spec, as the model of the call's route serves it."""

    #: The model as its route serves it (a deployment's family, upstream name and endpoint).
    model: ModelSpec
    job: JobSpec
    # Text an earlier attempt already delivered to subscribers: the adapter continues after it
    # (and reports usage as for one call) instead of starting over.
    continuation: str = ""
    # How many token events carried ``continuation``: the best count of its tokens that is
    # known without the model's tokenizer (one event per token for llama.cpp and most streams).
    continuation_events: int = 0
    job_id: str = ""
    account_id: str = ""

    @property
    def upstream_user(self) -> str:
        """Who makes the call, as providers that take one are told (OpenAI's ``user``, Anthropic's
        ``metadata.user_id``): the account, opaque, the same for all its calls, so that a provider's
        abuse reports can name it without the fleet's account ids leaving it."""
        return "chatfleet-" + hashlib.sha256(self.account_id.encode()).hexdigest()[:24]

    @property
    def messages(self) -> tuple[Turn, ...]:
        return self.job.messages

    @property
    def prompt(self) -> str | None:
        return self.job.prompt

    @property
    def params(self) -> Sampling:
        return self.job.params

    @property
    def tools(self) -> Tools | None:
        """The job's tools, unless it may call none (``tool_choice: none``)."""
        tools = self.job.tools
        return tools if tools is not None and tools.choice != "none" else None

    @property
    def output(self) -> Output | None:
        return self.job.output

    def call_id(self, index: int) -> str:
        """An id for a call whose provider gives none (Gemini): fixed per job and index, so a
        call made again names it the same."""
        return "call_" + hashlib.sha256(f"{self.job_id}:{index}".encode()).hexdigest()[:24]

    @property
    def max_tokens(self) -> int:
        """The job's completion bound, whole (what was reserved for it at admission)."""
        return self.job.params.max_tokens

    def tokens_left(self, delivered: int | None = None) -> int:
        """This call's ``max_tokens`` when it continues the delivered text: the job's bound less
        the tokens delivered (their count by events, ``continuation_events``, unless the adapter
        counts them exactly: ``delivered``), at least 1."""
        used = self.continuation_events if delivered is None else delivered
        return max(self.max_tokens - used, 1)


@dataclass
class TextDelta:
    text: str


@dataclass
class Completion:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Embeddings:
    """An embedding call's answer: one vector per input, in order, and the tokens it read."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class ProviderError(Exception):
    """An upstream failure. ``retryable`` ones (429, 5xx, timeouts, cut streams) are retried by
    the runner with backoff; the others end the job with ``code`` and ``message``."""

    message: str
    code: str = "provider_error"
    status: int | None = None
    retryable: bool = False
    retry_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class Provider(ABC):
    family: str

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | ToolCallDelta | Completion]:
        """Yield TextDelta items as text arrives (ToolCallDelta ones as tool calls do), then
        exactly one Completion."""

    async def embed(self, request: GenerationRequest) -> Embeddings:
        """The vectors of ``request.job.embed``'s inputs (a family without embeddings refuses)."""
        raise ProviderError(f"the {self.family} family serves no embeddings", code="model_unavailable")

    def missing_configuration(self) -> str | None:
        """The setting that must be set before this provider can be used, or None."""
        return None

    async def close(self) -> None:
        return None
