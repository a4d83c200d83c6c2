"""``chatfleet batch``: submit a JSONL file of requests, follow it, fetch its results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from client.chat import AsJson
from client.http import Api, StreamUnavailable, api, event_json, iter_sse
from client.output import console, fail, note, out, print_json, print_record, print_table, when

TERMINAL_BATCH = {"completed", "failed", "expired", "cancelled"}

app = typer.Typer(help="Batches of requests from a JSONL file.", no_args_is_help=True)


def batch_fields(batch: dict) -> list[tuple[str, Any]]:
    counts = batch.get("request_counts") or {}
    fields = [
        ("id", batch.get("id")), ("status", batch.get("status")),
        ("requests", f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
                     f"{counts.get('total', 0)} total"),
    ]
    for name in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                 "cancelling_at", "cancelled_at", "expires_at"):
        if batch.get(name):
            fields.append((name.removesuffix("_at").replace("_", " "), when(batch[name])))
    if batch.get("metadata"):
        fields.append(("metadata", batch["metadata"]))
    errors = ((batch.get("errors") or {}).get("data")) or []
    if errors:
        fields.append(("errors", len(errors)))
    return fields


def batch_errors(batch: dict) -> list[str]:
    lines = []
    for e in ((batch.get("errors") or {}).get("data")) or []:
        where = f"line {e['line']}" if e.get("line") is not None else (e.get("custom_id") or "batch")
        lines.append(f"{where}: {e.get('message') or e.get('code')}")
    return lines


def batch_summary(batch: dict, elapsed: float | None = None) -> str:
    counts = batch.get("request_counts") or {}
    took = f" in {elapsed:.1f} s" if elapsed is not None else ""
    return (f"{batch.get('id')} {batch.get('status')}: {counts.get('completed', 0)} completed, "
            f"{counts.get('failed', 0)} failed of {counts.get('total', 0)}{took}")


def parse_metadata(items: list[str] | None) -> dict[str, str]:
    metadata = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--metadata")
        metadata[key] = value
    return metadata


def follow_batch(client: Api, batch_id: str, on_update) -> dict:
    """Follow a batch until it is over: its SSE stream, or polling every second when the stream
    is not there or breaks."""
    try:
        with client.stream("GET", f"/v4/batches/{batch_id}/stream") as response:
            if response.status_code in (404, 405, 501) or response.status_code == 204:
                raise StreamUnavailable(str(response.status_code))
            client.check(response)
            for event in iter_sse(response):
                if event.event in ("progress", "end") and event.data:
                    batch = event_json(event.data)
                    on_update(batch)
                    if event.event == "end" or batch.get("status") in TERMINAL_BATCH:
                        return batch
    except (StreamUnavailable, httpx.TransportError):
        pass
    while True:
        batch = client.get(f"/v4/batches/{batch_id}")
        on_update(batch)
        if batch.get("status") in TERMINAL_BATCH:
            return batch
        time.sleep(1.0)


def wait_batch(client: Api, batch: dict) -> dict:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} req/s" if task.speed else "-- req/s")

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), RateColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=console(stderr=True), transient=False,
    )

    def counts(b: dict) -> tuple[int, int | None, int]:
        c = b.get("request_counts") or {}
        total = c.get("total") or None
        return (c.get("completed") or 0) + (c.get("failed") or 0), total, c.get("failed") or 0

    done, total, failed = counts(batch)
    with progress:
        task = progress.add_task(batch.get("status", ""), total=total, completed=done, failed=failed)

        def on_update(b: dict) -> None:
            done, total, failed = counts(b)
            progress.update(task, description=b.get("status", ""), total=total, completed=done, failed=failed)

        return follow_batch(client, batch["id"], on_update)


def finish_batch(batch: dict, as_json: bool, elapsed: float | None = None) -> None:
    if as_json:
        print_json(batch)
    status = batch.get("status")
    if status == "failed":
        errors = batch_errors(batch)
        for line in errors:
            note(line)
        count = (batch.get("errors") or {}).get("total") or len(errors)
        fail(f"batch {batch.get('id')} failed" + (f" ({count} invalid lines)" if errors else ""))
    if status != "completed":  # expired or cancelled
        fail(batch_summary(batch, elapsed))
    if not as_json:
        out(batch_summary(batch, elapsed))


@app.command("submit")
def batch_submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="JSONL, one request a line: {custom_id, method, url, body}")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the batch to its end with a progress bar")] = False,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE (repeatable)",
                                                       show_default=False)] = None,
    as_json: AsJson = False,
) -> None:
    """Submit a batch (POST /v4/batches); prints its id. With --wait, exit code 0 when the batch
    completes (even with failed lines), 1 when it fails, expires or is cancelled."""
    meta = parse_metadata(metadata)
    client = api()
    started = time.monotonic()
    with open(file, "rb") as f:
        data = {"metadata": json.dumps(meta)} if meta else None
        batch = client.post("/v4/batches", files={"file": (file.name, f, "application/jsonl")}, data=data)
    if batch.get("status") in TERMINAL_BATCH:  # refused at validation
        if not as_json:
            out(batch["id"])
        finish_batch(batch, as_json)
        return
    if not wait:
        print_json(batch) if as_json else out(batch["id"])
        return
    if not as_json:
        out(batch["id"])
    batch = wait_batch(client, batch)
    finish_batch(batch, as_json, time.monotonic() - started)


@app.command("status")
def batch_status(batch_id: str, as_json: AsJson = False) -> None:
    """Show a batch (GET /v4/batches/{id})."""
    batch = api().get(f"/v4/batches/{batch_id}")
    if as_json:
        print_json(batch)
        return
    print_record(batch_fields(batch))
    for line in batch_errors(batch):
        note(line)


Output = Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False, help="write to this file "
                                             "instead of stdout", show_default=False)]


@app.command("results")
def batch_results(batch_id: str, output: Output = None) -> None:
    """The batch's results as JSONL, one line per request (GET /v4/batches/{id}/results)."""
    api().download(f"/v4/batches/{batch_id}/results", output)


@app.command("errors")
def batch_errors_cmd(batch_id: str, output: Output = None) -> None:
    """The batch's failed requests as JSONL (GET /v4/batches/{id}/errors)."""
    api().download(f"/v4/batches/{batch_id}/errors", output)


@app.command("cancel")
def batch_cancel(batch_id: str, as_json: AsJson = False) -> None:
    """Cancel a batch: requests not yet run are dropped."""
    batch = api().post(f"/v4/batches/{batch_id}/cancel")
    print_json(batch) if as_json else out(f"{batch['id']} {batch['status']}")


@app.command("list")
def batch_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="page size")] = 20,
    as_json: AsJson = False,
) -> None:
    """Your batches, newest first, every page (GET /v4/batches)."""
    client = api()
    batches: list[dict] = []
    after: str | None = None
    seen: set[str] = set()
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        page = client.get("/v4/batches", params=params)
        data = page.get("data") or []
        batches.extend(b for b in data if b.get("id") not in seen)
        seen.update(b.get("id") for b in data)
        after = page.get("last_id") or (data[-1].get("id") if data else None)
        if not page.get("has_more") or not data or after is None:
            break
    if as_json:
        print_json(batches)
        return
    rows = []
    for b in batches:
        c = b.get("request_counts") or {}
        rows.append([b.get("id"), b.get("status"), c.get("total"), c.get("completed"), c.get("failed"),
                     when(b.get("created_at")), b.get("metadata") or None])
    print_table(["id", "status", "total", "completed", "failed", "created", "metadata"], rows,
                right={"total", "completed", "failed"})

