"""The job spec: what a job asks of its provider, the one contract that crosses the queue.

The API builds it once per job (``api/prompts.py``) from a validated request and the model's
catalog entry, and records it as JSON in the job's record (field ``spec``) or in a batch's
staged lines; every attempt of the worker reads it back, typed, with ``JobSpec.load``. Every
default is decided here, once: the completion bound (``max_tokens``: the request's, else the
model's ``default_max_tokens``, else ``CHATFLEET_DEFAULT_COMPLETION_RESERVATION`` within what
the model and its context window leave), which admission reserves (``reserved_tokens``) and
every adapter sends upstream, so that no call can use more than was reserved; and the three
estimates of a prompt's tokens made before any tokenizer has seen it.

msgspec, not pydantic: the spec is written by the fleet and read by the fleet, never by a
client, so what counts is a typed, checked decode at the least cost on the worker's path (it
decodes in less time than an untyped ``orjson.loads`` of the same bytes).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec

from shared.catalog import Catalog, ModelSpec

Role = Literal["system", "user", "assistant"]
ReasoningEffort = Literal["low", "medium", "high"]

# A prompt's tokens before a tokenizer has counted them, from its UTF-8 bytes. Real BPE
# tokenizers give ~4 bytes per token on English, ~3 on code, ~2-3 on CJK.
#: Fewer tokens than any real tokenizer gives: a prompt refused on it certainly does not fit.
BYTES_PER_TOKEN_AT_LEAST = 6
#: More tokens than real tokenizers give on almost any text: what admission reserves.
BYTES_PER_TOKEN_AT_MOST = 3
#: A typical count: what a job is billed when its provider never reported usage.
BYTES_PER_TOKEN_TYPICAL = 4
#: Tokens each message adds for the chat format's framing (role markers, separators): at
#: least, and at most (OpenAI's count is 3 to 4 a message and 3 to prime the reply).
MESSAGE_OVERHEAD_TOKENS = 3
MESSAGE_OVERHEAD_AT_MOST = 8


# Decoding ignores fields it does not know: during a rolling upgrade, a spec written by a newer
# API process is read by an older worker, which must still run it.


class UnreadableSpec(ValueError):
    """A recorded spec that is no JobSpec (corrupt, or of a shape no version of the fleet wrote)."""


class Turn(msgspec.Struct, frozen=True):
    """One message of the conversation as the provider is given it (after ``memory_strategy``
    and ``instructions`` were applied)."""

    role: Role
    content: str


class Sampling(msgspec.Struct, frozen=True, omit_defaults=True):
    """How to sample. ``None``: not set by the client, so not sent (the provider's default)."""

    temperature: float
    #: The completion bound: sent upstream as the call's limit and reserved at admission.
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    stop: tuple[str, ...] = ()
    top_k: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    reasoning_effort: ReasoningEffort | None = None
    seed: int | None = None


class JobSpec(msgspec.Struct, frozen=True):
    model: str
    messages: tuple[Turn, ...]
    params: Sampling
    #: UTF-8 bytes of what the provider reads: the rendered prompt, or the messages' contents.
    prompt_bytes: Annotated[int, msgspec.Meta(ge=0)]
    #: The rendered prompt, for the raw-prompt families (LLM-Engine/vLLM, the local model).
    prompt: str | None = None

    @property
    def reserved_tokens(self) -> int:
        """What admission holds against token limits: the prompt at its highest estimate plus
        the completion bound."""
        return prompt_tokens_at_most(self.messages, self.prompt) + self.params.max_tokens

    @property
    def typical_prompt_tokens(self) -> int:
        return math.ceil(self.prompt_bytes / BYTES_PER_TOKEN_TYPICAL)

    def dump(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def load(cls, raw: str | bytes, catalog: Catalog | None = None, reservation: int = 4096) -> JobSpec:
        """The spec recorded as ``raw``. One recorded before every spec carried its bound
        (``params.max_tokens`` null) gets it here, decided as for a new one: by its model in
        ``catalog``, or ``reservation`` alone for a model no longer there."""
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            # A ValidationError too; a spec of before the bound fails only for its null max_tokens.
            data = _loose(raw)
            params = data.get("params") if isinstance(data, dict) else None
            if not isinstance(data, dict) or not isinstance(params, dict) or params.get("max_tokens") is not None:
                raise UnreadableSpec(f"the job's spec cannot be read: {exc}") from None
        try:
            legacy = msgspec.convert({**data, "params": {**params, "max_tokens": 1}}, cls)
        except msgspec.ValidationError as exc:
            raise UnreadableSpec(f"the job's spec cannot be read: {exc}") from None
        model = catalog.get(legacy.model) if catalog is not None else None
        bound = (completion_bound(model, legacy.messages, legacy.prompt, None, reservation)
                 if model is not None else reservation)
        return msgspec.structs.replace(legacy, params=msgspec.structs.replace(legacy.params, max_tokens=bound))


class StagedLine(msgspec.Struct, frozen=True):
    """A valid batch line as the API stages it (``chatfleet:batch:{id}:pending``) until the
    workers' feeder makes it a job; its spec travels as recorded, to be read by ``JobSpec.load``."""

    custom_id: str
    model: str
    queue: str
    spec: msgspec.Raw

    def dump(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def load(cls, raw: str | bytes) -> StagedLine:
        return _staged_decoder.decode(raw)


def prompt_tokens_at_least(messages: tuple[Turn, ...] | list[Turn], prompt: str | None) -> int:
    """A count below the real one on almost any text (see ``BYTES_PER_TOKEN_AT_LEAST``)."""
    if prompt is not None:
        return math.ceil(len(prompt.encode()) / BYTES_PER_TOKEN_AT_LEAST)
    return sum(math.ceil(len(m.content.encode()) / BYTES_PER_TOKEN_AT_LEAST) + MESSAGE_OVERHEAD_TOKENS
               for m in messages)


def prompt_tokens_at_most(messages: tuple[Turn, ...] | list[Turn], prompt: str | None) -> int:
    """A count above the real one on almost any text (see ``BYTES_PER_TOKEN_AT_MOST``)."""
    if prompt is not None:
        return math.ceil(len(prompt.encode()) / BYTES_PER_TOKEN_AT_MOST)
    return sum(math.ceil(len(m.content.encode()) / BYTES_PER_TOKEN_AT_MOST) + MESSAGE_OVERHEAD_AT_MOST
               for m in messages)


def completion_bound(model: ModelSpec, messages: tuple[Turn, ...] | list[Turn], prompt: str | None,
                     requested: int | None, reservation: int) -> int:
    """The job's ``max_tokens``: the client's (``requested``), else the model's
    ``default_max_tokens``, else ``reservation`` (``CHATFLEET_DEFAULT_COMPLETION_RESERVATION``)
    at most the model's ``max_output`` and what its context window leaves after the prompt's
    highest estimate, so that the provider does not refuse the prompt with a bound the client
    never asked for. A prompt that may fill the window all but gets what its lowest estimate
    leaves: the provider, which counts exactly, says whether it fits."""
    if requested is not None:
        return requested
    if model.default_max_tokens is not None:
        return model.default_max_tokens
    room = model.context_window - prompt_tokens_at_most(messages, prompt)
    if room < 1:
        room = model.context_window - prompt_tokens_at_least(messages, prompt)
    return max(min(reservation, model.max_output, room), 1)


def _loose(raw: str | bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobSpec)
_staged_decoder = msgspec.json.Decoder(StagedLine)
