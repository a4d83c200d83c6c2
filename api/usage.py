"""Reading the usage ledger: per account, model and UTC day, summed as asked, as JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from shared import keys
from shared.usage import COUNTERS, day_score


async def read_usage(redis, account_id: str, start: date, end: date, model: str | None = None) -> list[dict]:
    """Rows ``{account_id, day, model, counters...}`` for days in [start, end], summed over the
    ledger's shards (``shared/keys.py``)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.SHARDS):
            pipe.zrangebyscore(keys.usage_days(account_id, shard), day_score(start.isoformat()),
                               day_score(end.isoformat()))
        days_by_shard = await pipe.execute()
    wanted = [(shard, day) for shard, days in enumerate(days_by_shard) for day in days]
    if not wanted:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for shard, day in wanted:
            pipe.hgetall(keys.usage_day(account_id, day, shard))
        hashes = await pipe.execute()
    by_day: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: dict.fromkeys(COUNTERS, 0)))
    for (_, day), fields in zip(wanted, hashes):
        per_model = by_day[day]
        for field, value in fields.items():
            m, _, counter = field.rpartition("|")
            if counter in COUNTERS:
                per_model[m][counter] += int(value)
    rows = []
    for day in sorted(by_day):
        for m, counters in sorted(by_day[day].items()):
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
    end = end or datetime.now(UTC).date()
    # 30 days before the end, or the first day there is (an end in year 1 has no 30 days before it)
    start = start or (end - timedelta(days=30) if end > date.min + timedelta(days=30) else date.min)
    return start, end
