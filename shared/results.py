"""What a job's ending and its token events carry, as workers write them and the doors read them:
the result body and the stream chunks, in the SGP v4 shape (the OpenAI door rewords them), the
job's statuses, and times as the API shows them."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal


def iso(ts: str | float | None) -> str | None:
    """A unix time (as stored in Redis) as the API shows times: ISO 8601, UTC, milliseconds."""
    if ts in (None, ""):
        return None
    return (
        datetime.fromtimestamp(float(ts), tz=UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def token_usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt": prompt, "completion": completion, "total": prompt + completion}


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of a tool call as it streams: the call's ``index`` in the answer, its ``id`` and
    function ``name`` (on its first piece), and a piece of its JSON ``arguments``."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def delta(self) -> dict[str, Any]:
        """The piece as OpenAI's ``delta.tool_calls[]`` entry."""
        function: dict[str, Any] = {"arguments": self.arguments}
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out

    @classmethod
    def of(cls, delta: dict[str, Any]) -> ToolCallPiece:
        function = delta.get("function") or {}
        return cls(int(delta["index"]), function.get("arguments") or "", delta.get("id"), function.get("name"))


def whole_calls(pieces: Iterable[ToolCallPiece]) -> tuple[ToolCallPiece, ...]:
    """``pieces`` as one piece per call, whole (a call given no arguments has ``{}``)."""
    calls = tool_calls_of(pieces)
    return tuple(ToolCallPiece(i, c["function"]["arguments"] or "{}", c["id"], c["function"]["name"])
                 for i, c in enumerate(calls))


def tool_calls_of(pieces: Iterable[ToolCallPiece]) -> list[dict[str, Any]]:
    """The whole calls that ``pieces`` make, in their order: OpenAI's ``message.tool_calls``."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "type": "function",
                                              "function": {"name": "", "arguments": ""}})
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["function"]["name"] = piece.name
        call["function"]["arguments"] += piece.arguments
    return [calls[i] for i in sorted(calls)]


def completion_body(
    content: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The non-streaming response body (``tool_calls``: OpenAI's, where the model made calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "chat_completion": {"message": message, "finish_reason": finish_reason},
        "token_usage": token_usage(prompt_tokens, completion_tokens),
    }


def embedding_body(vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    """An embedding job's result: each vector as base64 of little-endian float32 (OpenAI's
    ``encoding_format: base64``; a quarter of the size of the numbers as JSON text)."""
    return {"embeddings": [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors],
            "token_usage": token_usage(prompt_tokens, 0)}


def embedding_vectors(body: dict[str, Any]) -> list[list[float]]:
    """The vectors of an embedding job's result, as floats."""
    out = []
    for encoded in body["embeddings"]:
        raw = base64.b64decode(encoded)
        out.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    return out


def stream_chunk(
    delta: str,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    tool_calls: Sequence[ToolCallPiece] = (),
) -> dict[str, Any]:
    """One streamed chunk: the chat shape plus the completions-API shape the SDK declares; tool
    calls (or their pieces) ride in ``message.tool_calls`` (OpenAI's delta), with no text."""
    usage = (token_usage(prompt_tokens, completion_tokens)
             if prompt_tokens is not None and completion_tokens is not None else None)
    final = usage is not None
    chunk: dict[str, Any] = {
        "chat_completion": {
            "message": {"role": "assistant", "content": delta},
            "finish_reason": finish_reason,
        },
        "token_usage": usage,
        "completions": [["", [delta]]],
        "finish_reason": finish_reason,
    }
    if tool_calls:
        chunk["chat_completion"]["message"]["tool_calls"] = [call.delta() for call in tool_calls]
    if final:
        chunk["prompt_tokens"] = prompt_tokens
        chunk["response_tokens"] = completion_tokens
    return chunk


JobStatus = Literal["queued", "running", "throttled", "cancelling", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
