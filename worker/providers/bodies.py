"""Pieces of provider request bodies that several families share: the optional parameters a
body carries, and the conversation reshaped as chat APIs want it (one system prompt apart,
turns that alternate, none empty)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.jobspec import Turn


def given(**fields: Any) -> dict[str, Any]:
    """The ``fields`` that are set (not None): a body's optional parameters, by the provider's names."""
    return {name: value for name, value in fields.items() if value is not None}


def chat_messages(turns: tuple[Turn, ...]) -> list[dict[str, Any]]:
    """The conversation as chat APIs take it: ``[{"role", "content"}]``."""
    return [{"role": turn.role, "content": turn.content} for turn in turns]


def merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``spec.extra`` over ``body``, last; a table in both is merged one level deep, so an
    operator can add e.g. one generation option without restating the others."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def merge_turns(turns: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """(role, text) turns as ``[{"role", "content"}]``, consecutive ones of one role made one
    (joined by a blank line); empty ones are dropped (the APIs refuse empty turns, and they
    carry nothing)."""
    merged: list[dict[str, str]] = []
    for role, text in turns:
        if not text.strip():
            continue
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n\n" + text
        else:
            merged.append({"role": role, "content": text})
    return merged


def split_system(turns: tuple[Turn, ...]) -> tuple[str, list[Turn]]:
    system = [m.content for m in turns if m.role == "system" and m.content.strip()]
    return "\n\n".join(system), [m for m in turns if m.role != "system"]
