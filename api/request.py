"""A chat-completion request as the fleet serves it, whichever door it came through.

Each door (``api/sgp/``, ``api/openai/``) validates its own wire format, stating each sampling
parameter with the types below (one rule per parameter, for both doors), and turns it into a
``CompletionRequest``: the door-neutral request that ``api/jobs.py`` checks against the model and
makes a job of, for interactive requests and batch lines alike.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

import jsonschema
import msgspec
from pydantic import AfterValidator, Field

from shared.jobspec import Embedding, Output, ReasoningEffort, Tools, Turn

MAX_STOP_SEQUENCES = 4
# The largest integer parameter taken (max_tokens, top_k, last_k): no provider takes more, and a
# larger one would not fit the job record.
MAX_INTEGER = 2**31 - 1


def _stops(value: list[str]) -> list[str]:
    if len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(s == "" for s in value):
        raise ValueError("stop sequences must be non-empty strings")
    return value


MaxTokens = Annotated[int, Field(ge=1, le=MAX_INTEGER)]
StopSequences = Annotated[list[str], AfterValidator(_stops)]
TopK = Annotated[int, Field(ge=1, le=MAX_INTEGER)]
# Floats are finite: JSON has no NaN or Infinity, though some encoders write them.
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]


#: The largest image a request may carry (decoded): more than any family takes of one image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)


def check_image_url(url: str) -> None:
    """An image's URL as the fleet takes it: a base64 ``data:`` URL of an image type, within
    ``MAX_IMAGE_BYTES``, or an ``http(s)`` URL (which only the families that fetch images
    themselves take: the fleet never fetches one)."""
    if url.startswith(("http://", "https://")):
        return
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise ValueError("an image's url must be a base64 data URL (data:image/png;base64,...) or an http(s) URL")
    if match["type"] not in IMAGE_TYPES:
        raise ValueError(f"an image must be one of {', '.join(IMAGE_TYPES)}, not {match['type']}")
    data = match["data"]
    if len(data) * 3 // 4 > MAX_IMAGE_BYTES:
        raise ValueError(f"an image may hold at most {MAX_IMAGE_BYTES} bytes")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image's data URL is not valid base64") from None


#: Bounds on a schema a request carries (tools' parameters, response_format): no family takes
#: deeper, and a deeper one would exhaust the checker's recursion.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 10_000


def _schema_shape(schema: Any, name: str) -> None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"{name} nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if nodes > MAX_SCHEMA_NODES:
            raise ValueError(f"{name} holds more than {MAX_SCHEMA_NODES} values")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            check_unicode(value)


def check_schema(schema: dict[str, Any], name: str) -> None:
    """``schema`` if it is a JSON Schema (draft 2020-12, as every family reads them), within
    ``MAX_SCHEMA_DEPTH`` and ``MAX_SCHEMA_NODES``."""
    _schema_shape(schema, name)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except RecursionError:
        raise ValueError(f"{name} is too deeply recursive to check") from None
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"{name} is not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}") from None


def _schema_named(name: str):
    def checked(value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value, name)
        return value
    return checked


#: A tool's ``parameters`` and an answer's ``schema``: JSON Schemas, checked by ``check_schema``.
ParametersSchema = Annotated[dict[str, Any], AfterValidator(_schema_named("parameters"))]
AnswerSchema = Annotated[dict[str, Any], AfterValidator(_schema_named("schema"))]


def check_unicode(content: Any) -> Any:
    """``content`` (a string, or parts with ``text``), if it is text UTF-8 can carry (no lone
    surrogate): a validator for message contents on every door."""
    if content is None:
        return content
    for text in ([content] if isinstance(content, str) else [p.text for p in content if hasattr(p, "text")]):
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("content is not valid Unicode text (it has a lone surrogate)") from None
    return content


Priority = Literal["high", "default", "low"]
# OpenAI's service tiers, as priorities among the account's own work.
SERVICE_TIERS: dict[str, Priority] = {"auto": "default", "default": "default", "flex": "low", "scale": "default",
                                      "priority": "high"}


class Parameters(msgspec.Struct, frozen=True):
    """The sampling parameters the client set (``None``: not set), named as the catalog names
    what each model takes (``parameters`` in ``shared/catalog.toml``)."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop_sequences: tuple[str, ...] | None = None
    top_k: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    reasoning_effort: ReasoningEffort | None = None
    seed: int | None = None

    def given(self) -> set[str]:
        """Names of the parameters the client set."""
        return {name for name in self.__struct_fields__ if getattr(self, name) is not None}


class CompletionRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    messages: tuple[Turn, ...]
    #: The temperature when the client sets none: each door's own (SGP's 0.2, OpenAI's 1).
    default_temperature: float
    parameters: Parameters = msgspec.field(default_factory=Parameters)
    #: The account the body names (SGP's ``account_id``): it must be the key's.
    account_id: str | None = None
    #: Put first as a system message, after ``last_k`` kept the last messages.
    instructions: str | None = None
    last_k: int | None = None
    chat_template: str | None = None
    stream: bool = False
    #: Functions the model may call, and how (OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls``).
    tools: Tools | None = None
    #: What the answer's text must be (OpenAI's ``response_format``, other than text).
    output: Output | None = None
    #: An embedding request's inputs (its messages are empty).
    embed: Embedding | None = None
    #: Where the job goes among its account's own work (SGP's ``priority``; OpenAI's
    #: ``service_tier``: ``flex`` is low, ``priority`` high).
    priority: Priority = "default"
