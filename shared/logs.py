"""Logging for the API and the workers: one JSON object per line (or plain text), secrets masked.

``CHATFLEET_LOG_FORMAT`` (``json``, the default, or ``text``) and ``CHATFLEET_LOG_LEVEL`` choose
the output. A JSON line holds ``ts``, ``level``, ``logger``, ``message`` and, when the log call
passed them in ``extra``, the job's context: ``job_id``, ``account_id``, ``model``, ``provider``,
``attempt``, ``batch_id`` (and ``port``). Message content is never logged; anything that looks like
a credential (``sk-...``, ``cf-...``, ``AKIA...``, ``AIza...``, ``Bearer ...``) is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from shared.settings import Settings

CONTEXT_FIELDS = ("job_id", "account_id", "model", "provider", "attempt", "batch_id", "port")

_SECRETS = re.compile(
    r"\b(?P<bearer>[Bb]earer\s+)[A-Za-z0-9._~+/=\-]+"
    r"|\b(?P<prefix>sk-|cf-|(?:AKIA|ASIA)(?=[A-Z0-9]{12})|AIza(?=[A-Za-z0-9_\-]{30}))[A-Za-z0-9_\-]{3,}",
)
MASK = "***"


def _mask(match: re.Match[str]) -> str:
    head: str = match.group("bearer") or match.group("prefix")  # one of the two alternatives matched
    return head + MASK


# The configured secrets themselves (provider keys, whatever they look like), masked wherever
# they appear: ``register_secrets`` adds them as they are loaded.
_configured: set[str] = set()
_configured_pattern: re.Pattern[str] | None = None
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words


def register_secrets(values: Iterable[str]) -> None:
    """Mask these exact values in every log line from now on."""
    global _configured_pattern
    new = {v for v in values if v and len(v) >= MIN_SECRET_CHARS} - _configured
    if new:
        _configured.update(new)
        _configured_pattern = re.compile("|".join(re.escape(v) for v in sorted(_configured, key=len, reverse=True)))


def redact(text: str) -> str:
    """``text`` with the configured secrets, and anything that looks like an API key or a bearer
    token, masked."""
    if not text:
        return text
    text = _SECRETS.sub(_mask, text)
    return _configured_pattern.sub(MASK, text) if _configured_pattern is not None else text


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message and arguments (the message is rendered once,
    here, so that a key passed as an argument is masked too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: leave it to the handler to report
            return True
        record.msg = redact(message)
        record.args = None
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out = {}
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is None or value == "":
            continue
        out[name] = redact(value) if isinstance(value, str) else value
    return out


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the job context, exc (if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
               "message": redact(record.getMessage())}
        out.update(_context(record))
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        # ensure_ascii: text with lone surrogates still encodes; escapes keep it one line.
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message [job_id=... model=...]``, credentials masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if context:
            head, sep, tail = line.partition("\n")
            line = head + " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]" + sep + tail
        return redact(line)


class _Handler(logging.StreamHandler[TextIO]):
    _chatfleet = True  # ours: replaced, never duplicated, by configure_logging


def make_handler(fmt: str = "json", stream: TextIO | None = None) -> logging.Handler:
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    return handler


# Loggers that come with handlers of their own (uvicorn's): theirs are removed so that their
# records reach ours. ``uvicorn.access`` keeps no handler when access logs are off, and is left
# alone then (a handler up its chain would turn them back on).
_THIRD_PARTY = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(settings: Settings | None = None) -> None:
    """Install the fleet's handler on the root logger (idempotent; other handlers, such as a
    test runner's, are kept)."""
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    fmt = (getattr(settings, "log_format", "json") or "json").lower()
    level = (getattr(settings, "log_level", "INFO") or "INFO").upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_chatfleet", False):
            root.removeHandler(handler)
    root.addHandler(make_handler(fmt))
    root.setLevel(level)
    from shared.provider_config import get_provider_settings

    register_secrets(get_provider_settings().secret_values())
    for name in _THIRD_PARTY:
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers = []
            logger.propagate = True
