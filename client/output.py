"""What the command line prints: results on stdout, notes and errors on stderr, tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Set
from typing import Any, NoReturn


class CLIError(Exception):
    """A failure to report as one ``error: ...`` line (exit code 1)."""



def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Off a terminal rich would assume 80 columns and wrap ids inside table cells.
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 200)
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False)


def out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def print_json(value: Any) -> None:
    out(json.dumps(value, indent=2, ensure_ascii=False))


def fail(message: str) -> NoReturn:
    raise CLIError(message)



def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.9f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def when(value: Any) -> str:
    """A timestamp as the API gives it (ISO 8601 or Unix seconds), shown in UTC."""
    if value in (None, ""):
        return ""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ").replace("+00:00", "").rstrip("Z")


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None,
                right: Set[str] = frozenset()) -> None:
    from rich.table import Table

    if title:
        out(title)
    table = Table()
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=name in ("id", "job", "batch"))
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console().print(table)


def print_record(fields: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in fields:
        table.add_row(name, _cell(value))
    console().print(table)

