"""The fake's knobs (server-wide config) and scripted behaviours, and how both are checked."""

from __future__ import annotations

from typing import Any

#: Server-wide defaults. ``tokens`` is the natural reply length (before max_tokens).
DEFAULT_CONFIG: dict[str, Any] = {
    "ttft_ms": 0.0,  # delay before the first token (and before a non-streaming reply starts)
    "tokens_per_s": 0.0,  # 0 = as fast as possible
    "tokens": 16,  # reply length in tokens (mode "tokens")
    "mode": "tokens",  # "tokens" | "echo"
    "text": None,  # fixed reply text (split on whitespace into tokens); overrides mode
    "api_key": None,  # None = any non-empty credential is accepted
    "record_limit": 10000,  # recorded requests kept (oldest dropped); 0 = record nothing
    "record_bodies": True,
}
KNOB_KEYS = ("ttft_ms", "tokens_per_s", "tokens", "mode", "text")
FILTER_KEYS = ("family", "path", "stream")
BEHAVIOUR_KEYS = set(KNOB_KEYS) | set(FILTER_KEYS) | {
    "status",
    "retry_after",
    "message",
    "error_type",
    "error_fields",
    "cut_after",
    "error_after",
    "hang",
    "delay_ms",
    "times",
    "headers",
}
FAMILIES = ("openai", "mistral", "anthropic", "gemini", "bedrock")

#: What a scripted error says when its behaviour names no ``message``.
DEFAULT_MESSAGES = {
    400: "Bad request.",
    401: "Unauthorized.",
    403: "Forbidden.",
    404: "Not found.",
    429: "Rate limit exceeded. Please retry after a short wait.",
    500: "The server had an error while processing your request.",
    502: "Bad gateway.",
    503: "The service is temporarily unavailable.",
    504: "Gateway timeout.",
    529: "Overloaded",
}


class ConfigError(ValueError):
    pass


def check_knobs(d: dict[str, Any], *, where: str) -> None:
    for k in ("ttft_ms", "tokens_per_s", "delay_ms"):
        if k in d and d[k] is not None and (not isinstance(d[k], (int, float)) or d[k] < 0):
            raise ConfigError(f"{where}: {k} must be a number >= 0")
    for k in ("tokens", "cut_after", "error_after", "times", "record_limit"):
        if k in d and d[k] is not None and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0):
            raise ConfigError(f"{where}: {k} must be an integer >= 0")
    if "mode" in d and d["mode"] not in ("tokens", "echo"):
        raise ConfigError(f"{where}: mode must be 'tokens' or 'echo'")
    if "text" in d and d["text"] is not None and not isinstance(d["text"], str):
        raise ConfigError(f"{where}: text must be a string or null")


def validate_behaviour(b: Any) -> dict[str, Any]:
    if not isinstance(b, dict):
        raise ConfigError("each behaviour must be a JSON object")
    unknown = set(b) - BEHAVIOUR_KEYS
    if unknown:
        raise ConfigError(f"unknown behaviour keys: {sorted(unknown)}")
    check_knobs(b, where="behaviour")
    if "status" in b and (not isinstance(b["status"], int) or not 400 <= b["status"] <= 599):
        raise ConfigError("behaviour: status must be an integer 400..599")
    if "headers" in b and not (
        isinstance(b["headers"], dict) and all(isinstance(v, (str, int, float)) for v in b["headers"].values())
    ):
        raise ConfigError("behaviour: headers must be an object of header name -> value")
    if "path" in b and not isinstance(b["path"], str):
        raise ConfigError("behaviour: path must be a glob string")
    if "error_fields" in b and not isinstance(b["error_fields"], dict):
        raise ConfigError("behaviour: error_fields must be an object")
    if "error_after" in b and "status" not in b:
        raise ConfigError("behaviour: error_after needs a status")
    fam = b.get("family")
    if fam is not None:
        fams = [fam] if isinstance(fam, str) else fam
        if not isinstance(fams, list) or any(f not in FAMILIES for f in fams):
            raise ConfigError(f"behaviour: family must be one (or a list) of {FAMILIES}")
    return dict(b)


def error_message(beh: dict[str, Any], status: int) -> str:
    """The text of a scripted error: the behaviour's own, else the status's usual one."""
    return beh.get("message") or DEFAULT_MESSAGES.get(status, "Error.")
