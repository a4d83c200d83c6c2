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

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = Literal["auto", "none", "required"]
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
#: An image's tokens: OpenAI's low-detail count, and more than any family bills one image of the
#: sizes they take (Anthropic's ~1,600 for 1.15 megapixels, OpenAI's high detail ~1,100).
IMAGE_TOKENS_AT_LEAST = 85
IMAGE_TOKENS_AT_MOST = 1_600


# Decoding ignores fields it does not know: during a rolling upgrade, a spec written by a newer
# API process is read by an older worker, which must still run it.


class UnreadableSpec(ValueError):
    """A recorded spec that is no JobSpec (corrupt, or of a shape no version of the fleet wrote)."""


class ToolCall(msgspec.Struct, frozen=True):
    """A function call the model made (an assistant turn's), as OpenAI names it: ``arguments``
    is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


class Image(msgspec.Struct, frozen=True, omit_defaults=True):
    """An image of a user turn: a ``data:`` URL (checked by the API: an image type, base64), or
    an ``http(s)`` URL for the families whose API fetches it itself."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class Turn(msgspec.Struct, frozen=True, omit_defaults=True):
    """One message of the conversation as the provider is given it (after ``memory_strategy``
    and ``instructions`` were applied). An assistant turn may carry the calls it made; a
    ``tool`` turn is a call's result (``tool_call_id``, and the function's ``name``, which some
    families want with the result)."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    images: tuple[Image, ...] = ()

    @property
    def text_bytes(self) -> int:
        """UTF-8 bytes of what the provider reads of the turn, images aside."""
        size = len(self.content.encode())
        for call in self.tool_calls:
            size += len(call.name.encode()) + len(call.arguments.encode())
        return size


class Tool(msgspec.Struct, frozen=True, omit_defaults=True):
    """A function the model may call: its JSON-schema ``parameters`` (an object schema)."""

    name: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    description: str | None = None
    strict: bool | None = None


class Tools(msgspec.Struct, frozen=True, omit_defaults=True):
    """The job's tools and how the model must use them: ``choice`` auto, none or required, or
    ``forced``, the one function it must call; ``parallel``: whether it may make several calls
    (None: the client did not say, and the provider's default holds)."""

    functions: tuple[Tool, ...]
    choice: ToolChoice = "auto"
    forced: str | None = None
    parallel: bool | None = None


class Output(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the answer's text must be (``response_format``): any JSON object, or JSON valid
    against ``schema`` (named ``name``; ``strict``: the provider must enforce it)."""

    type: Literal["json_object", "json_schema"]
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


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


class Embedding(msgspec.Struct, frozen=True, omit_defaults=True):
    """An embedding job's inputs (texts, or token ids where the family takes them) and the
    vector length asked for (None: the model's)."""

    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None

    @property
    def tokens_at_most(self) -> int:
        return sum(len(i) if isinstance(i, tuple) else math.ceil(len(i.encode()) / BYTES_PER_TOKEN_AT_MOST) + 2
                   for i in self.inputs)


class JobSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    model: str
    messages: tuple[Turn, ...]
    params: Sampling
    #: UTF-8 bytes of what the provider reads: the rendered prompt, or the messages' contents.
    prompt_bytes: Annotated[int, msgspec.Meta(ge=0)]
    #: The rendered prompt, for the raw-prompt families (LLM-Engine/vLLM, the local model).
    prompt: str | None = None
    tools: Tools | None = None
    output: Output | None = None
    #: An embedding job's inputs (its messages are empty).
    embed: Embedding | None = None

    @property
    def tool_definition_bytes(self) -> int:
        """UTF-8 bytes of the tools' and the output schema's definitions, which the provider reads
        as prompt (a raw prompt has them rendered in already)."""
        if self.prompt is not None:
            return 0
        size = 0
        if self.tools is not None and self.tools.choice != "none":
            size += len(_encoder.encode(self.tools.functions))
        if self.output is not None and self.output.schema is not None:
            size += len(_encoder.encode(self.output.schema))
        return size

    @property
    def reserved_tokens(self) -> int:
        """What admission holds against token limits: the prompt at its highest estimate plus
        the completion bound (an embedding job: its inputs, at their highest estimate)."""
        if self.embed is not None:
            return self.embed.tokens_at_most
        return (prompt_tokens_at_most(self.messages, self.prompt) + self.params.max_tokens
                + math.ceil(self.tool_definition_bytes / BYTES_PER_TOKEN_AT_MOST))

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
    return sum(math.ceil(m.text_bytes / BYTES_PER_TOKEN_AT_LEAST) + MESSAGE_OVERHEAD_TOKENS
               + IMAGE_TOKENS_AT_LEAST * len(m.images) for m in messages)


def prompt_tokens_at_most(messages: tuple[Turn, ...] | list[Turn], prompt: str | None) -> int:
    """A count above the real one on almost any text (see ``BYTES_PER_TOKEN_AT_MOST``)."""
    if prompt is not None:
        return math.ceil(len(prompt.encode()) / BYTES_PER_TOKEN_AT_MOST)
    return sum(math.ceil(m.text_bytes / BYTES_PER_TOKEN_AT_MOST) + MESSAGE_OVERHEAD_AT_MOST
               + IMAGE_TOKENS_AT_MOST * len(m.images) for m in messages)


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
