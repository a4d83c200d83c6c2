"""What a job's ending and its token events carry, as workers write them and the doors read them:
the result body and the stream chunks, in the SGP v4 shape (the OpenAI door rewords them), the
job's statuses, and times as the API shows them."""

from __future__ import annotations

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
    if final:
        chunk["prompt_tokens"] = prompt_tokens
        chunk["response_tokens"] = completion_tokens
    return chunk


JobStatus = Literal["queued", "running", "throttled", "cancelling", "succeeded", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
