"""Usage: ``GET /v4/usage`` (the caller's account) and ``GET /v4/admin/usage`` (any or all)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse

from api import accounts
from api.deps import AdminAuth, CurrentAccount, RedisDep
from api.openapi import CSV, answers
from api.usage import budgets, default_range, group, read_usage, to_csv

router = APIRouter()

GroupBy = Annotated[list[Literal["model", "day", "key"]] | None, Query(description="model, day and/or key")]


def _render(rows: list[dict], fmt: str, start: date, end: date, budget_rows: list[dict] | None = None):
    if fmt == "csv":
        return PlainTextResponse(to_csv(rows), media_type="text/csv",
                                 headers={"Content-Disposition": "attachment; filename=usage.csv"})
    return {"object": "usage", "start": start.isoformat(), "end": end.isoformat(), "data": rows,
            "budgets": budget_rows or []}


def _dimensions(group_by: Sequence[str]) -> set[str]:
    return {"account_id" if g == "account" else "key_id" if g == "key" else g for g in group_by}


def _check_range(start: date, end: date) -> None:
    if start > end:
        raise HTTPException(400, f"start ({start}) is after end ({end})")
    if (end - start).days > 400:
        raise HTTPException(400, "the date range may span at most 400 days")


JSON_OR_CSV = answers(CSV, description="JSON, or CSV with format=csv")


@router.get("/v4/usage", responses=JSON_OR_CSV)
async def my_usage(
    account: CurrentAccount, redis: RedisDep,
    start: date | None = None, end: date | None = None, model: str | None = None,
    group_by: GroupBy = None, format: Literal["json", "csv"] = "json", account_id: str | None = None,
):
    """Aggregated usage of the caller's own account (UTC days, both ends included)."""
    if account_id is not None and account_id != account:
        raise HTTPException(404, f"account {account_id!r} not found")
    start, end = default_range(start, end)
    _check_range(start, end)
    by = _dimensions(group_by or ["model", "day"])
    rows = await read_usage(redis, account, start, end, model, by_key="key_id" in by)
    return _render(group(rows, by), format, start, end, await budgets(redis, account))


@router.get("/v4/admin/usage", dependencies=[AdminAuth], responses=JSON_OR_CSV)
async def all_usage(
    redis: RedisDep, start: date | None = None, end: date | None = None, model: str | None = None,
    account_id: str | None = None,
    group_by: Annotated[list[Literal["account", "model", "day", "key"]] | None, Query()] = None,
    format: Literal["json", "csv"] = "json",
):
    """Usage across accounts (or one), grouped by account, model, day and/or key, with each
    account's budgets."""
    start, end = default_range(start, end)
    _check_range(start, end)
    ids = [account_id] if account_id else [a["id"] for a in await accounts.list_accounts(redis)]
    by = _dimensions(group_by or ["account", "model", "day"])
    rows: list[dict] = []
    budget_rows: list[dict] = []
    for acct in ids:
        rows.extend(await read_usage(redis, acct, start, end, model, by_key="key_id" in by))
        budget_rows.extend({"account_id": acct, **b} for b in await budgets(redis, acct))
    return _render(group(rows, by), format, start, end, budget_rows)
