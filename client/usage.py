"""``chatfleet usage``: the account's requests, tokens and cost."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

import typer

from client.chat import AsJson
from client.http import api
from client.output import out, print_json, print_table


class GroupBy(StrEnum):
    model = "model"
    day = "day"


USAGE_COUNTERS = ["requests", "succeeded", "failed", "cancelled", "prompt_tokens", "completion_tokens",
                  "total_tokens", "cost_usd"]


def usage(
    by: Annotated[list[GroupBy] | None, typer.Option("--by", help="group by model and/or day (repeatable); "
                                                                  "default both", show_default=False)] = None,
    start: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="first UTC day (default: "
                                                      "30 days before end)", show_default=False)] = None,
    end: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="last UTC day (default: today)",
                                                    show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="only this model", show_default=False)] = None,
    csv: Annotated[bool, typer.Option("--csv", help="print the API's CSV")] = False,
    as_json: AsJson = False,
) -> None:
    """Your account's usage (GET /v4/usage): requests, tokens and cost."""
    groups = list(dict.fromkeys(g.value for g in by or []))
    params: list[tuple[str, str]] = [("group_by", g) for g in groups]
    if start:
        params.append(("start", start.date().isoformat()))
    if end:
        params.append(("end", end.date().isoformat()))
    if model:
        params.append(("model", model))
    if csv:
        params.append(("format", "csv"))
        out(api().request("GET", "/v4/usage", params=params).text, end="")
        return
    report = api().get("/v4/usage", params=params)
    if as_json:
        print_json(report)
        return
    rows = report.get("data") or []
    keys = [k for k in ("day", "model") if k in (groups or ("day", "model"))]  # the API's default: both
    table_rows = [[r.get(k) for k in keys] + [r.get(c, 0) for c in USAGE_COUNTERS] for r in rows]
    if len(rows) > 1:
        totals = [sum(r.get(c, 0) or 0 for r in rows) for c in USAGE_COUNTERS]
        totals[-1] = round(totals[-1], 9)
        table_rows.append(["total"] + [""] * (len(keys) - 1) + totals if keys else totals)
    print_table(keys + USAGE_COUNTERS, table_rows, title=f"usage {report.get('start')} .. {report.get('end')}",
                right=set(USAGE_COUNTERS))
