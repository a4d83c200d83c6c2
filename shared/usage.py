"""The usage ledger: one record per finished job, aggregated per account x model x UTC day.

Usage is written by the same Lua script that finishes the job (``lua/finish_job.lua``), so it
is counted exactly once however often the job was delivered or retried, and is never lost
between the two writes. Costs are integers in nano-USD (prices are USD per million tokens, so
one token costs ``price * 1000`` nano-USD), summed without rounding drift and shown in USD.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from shared import keys
from shared.catalog import ModelSpec

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

    def as_dict(self) -> dict:
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
    return datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc).date().isoformat()


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


async def read_usage(redis, account_id: str, start: date, end: date, model: str | None = None) -> list[dict]:
    """Rows ``{account_id, day, model, counters...}`` for days in [start, end]."""
    days = await redis.zrangebyscore(keys.usage_days(account_id), day_score(start.isoformat()),
                                     day_score(end.isoformat()))
    if not days:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for day in days:
            pipe.hgetall(keys.usage_day(account_id, day))
        hashes = await pipe.execute()
    rows = []
    for day, fields in zip(days, hashes):
        per_model: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        for field, value in fields.items():
            m, _, counter = field.rpartition("|")
            if counter in COUNTERS:
                per_model[m][counter] = int(value)
        for m, counters in sorted(per_model.items()):
            if model is None or m == model:
                rows.append({"account_id": account_id, "day": day, "model": m, **counters})
    return rows


def group(rows: list[dict], by: set[str]) -> list[dict]:
    """Sum rows over everything but ``by`` (a subset of account_id, day, model)."""
    out: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in ("account_id", "day", "model") if k in by)
        acc = out.setdefault(key, {**{k: row[k] for k in ("account_id", "day", "model") if k in by},
                                   **dict.fromkeys(COUNTERS, 0)})
        for c in COUNTERS:
            acc[c] += row[c]
    result = []
    for acc in out.values():
        acc["total_tokens"] = acc["prompt_tokens"] + acc["completion_tokens"]
        acc["cost_usd"] = round(acc.pop("cost_nanousd") / 1e9, 9)
        acc["avg_latency_ms"] = round(acc.pop("latency_ms") / acc["requests"], 1) if acc["requests"] else 0
        result.append(acc)
    return result


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def default_range(start: date | None, end: date | None) -> tuple[date, date]:
    end = end or datetime.now(timezone.utc).date()
    start = start or end - timedelta(days=30)
    return start, end
