"""Reading the usage ledger: per account, model and UTC day, summed as asked, as JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from shared import keys
from shared.usage import COUNTERS, day_score


async def read_usage(redis, account_id: str, start: date, end: date, model: str | None = None,
                     by_key: bool = False) -> list[dict]:
    """Rows ``{account_id, day, model, counters...}`` for days in [start, end], summed over the
    ledger's shards (``shared/keys.py``); ``by_key``: one row per API key too (``key_id``, None
    for what no key submitted)."""
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
    # (day, model) -> key -> counters: the fields k:{key}|{model}|{counter} (lua/finish_job.lua)
    by_key_day: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: dict.fromkeys(COUNTERS, 0)))
    for (_, day), fields in zip(wanted, hashes):
        per_model = by_day[day]
        for field, value in fields.items():
            if field.startswith("k:"):
                if by_key:
                    key_id, _, rest = field[2:].partition("|")
                    m, _, counter = rest.rpartition("|")
                    if counter in COUNTERS:
                        by_key_day[(day, m)][key_id][counter] += int(value)
                continue
            m, _, counter = field.rpartition("|")
            if counter in COUNTERS:
                per_model[m][counter] += int(value)
    rows = []
    for day in sorted(by_day):
        for m, counters in sorted(by_day[day].items()):
            if model is not None and m != model:
                continue
            if not by_key:
                rows.append({"account_id": account_id, "day": day, "model": m, **counters})
                continue
            rest = dict(counters)
            for key_id, own in sorted(by_key_day[(day, m)].items()):
                rows.append({"account_id": account_id, "day": day, "model": m, "key_id": key_id, **own})
                for c in COUNTERS:
                    rest[c] -= own[c]
            if any(rest.values()):  # what no key submitted (before keys were counted apart)
                rows.append({"account_id": account_id, "day": day, "model": m, "key_id": None, **rest})
    return rows


async def budgets(redis, account_id: str) -> list[dict]:
    """The account's budgets and its keys', each with the period now counted: spent (settled
    jobs), reserved (the worst case of the jobs admitted and not settled) and what remains."""
    now = datetime.now(UTC)
    periods = {"day": now.date().isoformat(), "month": now.strftime("%Y-%m"), "total": "total"}
    key_ids = list(await redis.hkeys(keys.account_api_keys(account_id)))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.account(account_id), "budget_nanousd", "budget_period")
        pipe.hgetall(keys.budget(account_id))
        for key_id in key_ids:
            pipe.hmget(keys.key_limits(account_id, key_id), "budget_nanousd", "budget_period")
            pipe.hgetall(keys.budget(account_id, key_id))
        found = await pipe.execute()
    out = []
    for i, key_id in enumerate([None, *key_ids]):
        (budget, period), state = found[2 * i], found[2 * i + 1]
        if not budget:
            continue
        period = period or "month"
        pid = periods.get(period, "total")
        spent, reserved = int(state.get(f"spent:{pid}") or 0), max(int(state.get(f"reserved:{pid}") or 0), 0)
        out.append({"scope": "key" if key_id else "account", "key_id": key_id, "period": period,
                    "period_id": pid, "budget_usd": int(budget) / 1e9, "spent_usd": spent / 1e9,
                    "reserved_usd": reserved / 1e9, "remaining_usd": max(int(budget) - spent - reserved, 0) / 1e9})
    return out


DIMENSIONS = ("account_id", "day", "model", "key_id")


def group(rows: list[dict], by: set[str]) -> list[dict]:
    """Sum rows over everything but ``by`` (a subset of account_id, day, model, key_id)."""
    out: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row.get(k) for k in DIMENSIONS if k in by)
        acc = out.setdefault(key, {**{k: row.get(k) for k in DIMENSIONS if k in by},
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
