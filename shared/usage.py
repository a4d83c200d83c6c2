"""The usage ledger: one record per finished job, aggregated per account x model x UTC day.

Usage is written by the same Lua script that finishes the job (``lua/finish_job.lua``), so it
is counted exactly once however often the job was delivered or retried, and is never lost
between the two writes. Costs are integers in nano-USD (prices are USD per million tokens, so
one token costs ``price * 1000`` nano-USD), summed without rounding drift and shown in USD.
The API reads the ledger (``api/usage.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.catalog import ModelSpec

# The counters of each account x model x day hash (``keys.usage_day``), as the scripts that end a
# job write them (fields ``{model}|{counter}``).
COUNTERS = ("requests", "succeeded", "failed", "cancelled", "prompt_tokens", "completion_tokens",
            "cost_nanousd", "latency_ms")


@dataclass
class UsageRecord:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanousd: int
    latency_ms: int
    day: str
    estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "cost_usd": self.cost_nanousd / 1e9, "latency_ms": self.latency_ms,
                "estimated": self.estimated}


def cost_nanousd(spec: ModelSpec | None, prompt_tokens: int, completion_tokens: int) -> int:
    if spec is None:
        return 0
    return round(prompt_tokens * spec.price_input * 1000 + completion_tokens * spec.price_output * 1000)


def utc_day(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), tz=UTC).date().isoformat()


def record(spec: ModelSpec | None, model: str, prompt_tokens: int, completion_tokens: int,
           started: float | None, estimated: bool = False) -> UsageRecord:
    now = time.time()
    return UsageRecord(
        model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        cost_nanousd=cost_nanousd(spec, prompt_tokens, completion_tokens),
        latency_ms=int((now - started) * 1000) if started else 0, day=utc_day(now), estimated=estimated,
    )


def day_score(day: str) -> int:
    return int(day.replace("-", ""))
