"""The fake's deterministic reply: which tokens, how many, how it finishes and where it stops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Plan:
    deltas: list[str]  # one entry per generated token (may be "" while a stop prefix is held back)
    completion_tokens: int
    finish: str  # "stop" | "length" | "stop_sequence" | "tool_calls"
    stop_sequence: str | None = None
    call: Any = None  # a tools.Call the reply makes instead of text

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def count_words(texts: list[str]) -> int:
    """Prompt tokens: whitespace-separated words over all input text, at least 1."""
    return max(1, sum(len(t.split()) for t in texts))


def reply_begun_in(prompt: str) -> str:
    """The start of the fake's own reply (tok0 tok1 ... tokK) that a raw prompt ends with, if any:
    a completion continues its prompt, so the reply goes on from there."""
    words = prompt.split()
    for start in range(max(len(words) - 10_000, 0), len(words)):
        run = words[start:]
        if run[0] == "tok0" and run == [f"tok{i}" for i in range(len(run))]:
            return " ".join(run)
    return ""


def build_plan(knobs: dict[str, Any], limit: int | None, stops: list[str], last_user: str,
               prefill: str = "") -> Plan:
    """Generate the reply; after a prefill, the reply continues the same word sequence (as a
    real model continues the text it is handed), so a prefill of "tok0 tok1" yields " tok2 ..."."""
    text = knobs.get("text")
    if text is not None:
        words: list[str] | None = text.split()
    elif knobs.get("mode") == "echo":
        words = last_user.split()
    else:
        words = None
    start = len(prefill.split())
    total = len(words) if words is not None else int(knobs.get("tokens", 16))
    natural = max(total - start, 0)
    n = natural if limit is None else min(limit, natural)
    finish = "length" if limit is not None and limit < natural else "stop"

    def piece(i: int) -> str:
        i += start
        w = words[i] if words is not None else f"tok{i}"
        return w if i == 0 else " " + w

    stops = [s for s in stops if s]
    if not stops:
        return Plan([piece(i) for i in range(n)], n, finish)
    out = ""
    emitted = 0
    deltas: list[str] = []
    for i in range(n):
        p = piece(i)
        out += p
        best: tuple[int, str] | None = None
        for s in stops:
            pos = out.find(s, max(0, len(out) - len(p) - len(s) + 1))
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        if best is not None:
            deltas.append(out[emitted : best[0]])
            return Plan(deltas, i + 1, "stop_sequence", best[1])
        hold = 0
        for s in stops:  # hold back a suffix that could still become a stop sequence
            for k in range(min(len(s) - 1, len(out)), hold, -1):
                if out.endswith(s[:k]):
                    hold = k
                    break
        safe = len(out) - hold
        deltas.append(out[emitted:safe])
        emitted = safe
    if deltas and emitted < len(out):
        deltas[-1] += out[emitted:]
    return Plan(deltas, n, finish)
