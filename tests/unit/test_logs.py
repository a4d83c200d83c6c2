"""Structured logs: one JSON object per line with the job context, and no credentials."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared.logs import CONTEXT_FIELDS, RedactingFilter, configure_logging, make_handler, redact
from shared.settings import Settings


@pytest.fixture
def capture():
    """A logger wired to a fleet handler writing into a buffer; returns (logger, lines)."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logger = logging.getLogger("chatfleet.test.logs")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.DEBUG

    def lines() -> list[str]:
        return stream.getvalue().splitlines()

    yield logger, lines
    logger.handlers, logger.propagate = [], True


def test_one_json_object_per_line_with_the_extras(capture):
    logger, lines = capture
    context = {"job_id": "job_1", "account_id": "acct", "model": "gpt-4o", "provider": "openai",
               "attempt": 2, "batch_id": "batch_9"}
    logger.info("job %s", "succeeded", extra=context)
    logger.warning("multi\nline\nmessage", extra={"job_id": "job_2", "unrelated": "not logged"})
    try:
        raise ValueError("boom\nwith a traceback")
    except ValueError:
        logger.exception("failed", extra={"job_id": "job_3"})
    out = lines()
    assert len(out) == 3, out
    first, second, third = (json.loads(line) for line in out)
    assert first["message"] == "job succeeded"
    assert first["level"] == "INFO" and first["logger"] == "chatfleet.test.logs"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    for key, value in context.items():
        assert first[key] == value
    assert second["message"] == "multi\nline\nmessage"
    assert second["job_id"] == "job_2" and "unrelated" not in second and "model" not in second
    assert third["level"] == "ERROR" and "ValueError: boom" in third["exc"]
    assert set(CONTEXT_FIELDS) >= {"job_id", "account_id", "model", "provider", "attempt", "batch_id"}


def test_text_that_is_not_utf8_encodable_still_gives_one_line(capture):
    logger, lines = capture
    logger.info("odd \ud800 text \u00e9")
    (line,) = lines()
    assert json.loads(line)["message"] == "odd \ud800 text \u00e9"


@pytest.mark.parametrize("secret, kept", [
    ("sk-proj-AbCdEf0123456789xyz", "sk-***"),
    ("sk-test", "sk-***"),
    ("cf-test-dev-key", "cf-***"),
    ("cf-admin-Zm9vYmFyYmF6cXV4", "cf-***"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIA***"),
    ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIza***"),  # a Google (Gemini) API key
    ("Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "Bearer ***"),
    ("bearer abc/def+ghi=", "bearer ***"),
])
def test_redaction_masks_keys(secret, kept):
    masked = redact(f"calling with {secret}, then more")
    assert secret not in masked
    assert f"calling with {kept}, then more" == masked


def test_redaction_leaves_ordinary_text_alone():
    for text in ("task-queue disk-usage risk-free", "job_01HXYZ succeeded", "worker-local@host",
                 "model gpt-4o-mini on provider openai", "ASIA is a continent", "AIza short"):
        assert redact(text) == text


def test_keys_in_messages_args_extras_and_tracebacks_are_masked(capture):
    logger, lines = capture
    logger.info("key %s and %r", "sk-live-0123456789abcdef", {"auth": "Bearer tok.en.value"})
    logger.info("header Authorization: Bearer abcdef123456", extra={"account_id": "cf-leaked-key-1234"})
    try:
        raise RuntimeError("upstream said: invalid key sk-ant-api03-secretsecret")
    except RuntimeError:
        logger.exception("refused AKIAABCDEFGHIJKLMNOP")
    text = "\n".join(lines())
    for secret in ("sk-live-0123456789abcdef", "tok.en.value", "abcdef123456", "cf-leaked-key-1234",
                   "sk-ant-api03-secretsecret", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in text, text
    assert all(json.loads(line) for line in lines())


def test_filter_renders_arguments_once():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s b %d", ("sk-abcdef", 3), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "a sk-*** b 3" and record.args is None


def test_text_format_carries_context_and_masks(capture):
    logger, _ = capture
    stream = io.StringIO()
    logger.handlers = [make_handler("text", stream)]
    logger.info("using cf-secret-key-99", extra={"job_id": "job_7", "model": "m"})
    line = stream.getvalue().strip()
    assert "cf-secret-key-99" not in line and "cf-***" in line
    assert line.endswith("[job_id=job_7 model=m]") and " INFO chatfleet.test.logs: " in line


def test_configure_logging_is_idempotent_and_keeps_foreign_handlers():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        configure_logging(Settings(log_format="json", log_level="WARNING"))
        configure_logging(Settings(log_format="text", log_level="DEBUG"))
        ours = [h for h in root.handlers if getattr(h, "_chatfleet", False)]
        assert len(ours) == 1 and foreign in root.handlers
        assert root.level == logging.DEBUG
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


def test_configured_secrets_are_masked_whatever_they_look_like():
    from shared.logs import register_secrets

    register_secrets(["plain-looking-secret-42", "abc"])  # the second: too short to be told from words
    assert redact("upstream said: key plain-looking-secret-42 is wrong, abc") == \
        "upstream said: key *** is wrong, abc"
