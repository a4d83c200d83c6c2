"""``chatfleet jobs``: submit a job, show it, follow its token stream, cancel it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import typer

from client.chat import (
    DEFAULT_MODEL,
    AsJson,
    MaxTokens,
    Model,
    Question,
    System,
    Temperature,
    chat_body,
    chunk_text,
    error_text,
)
from client.http import StreamUnavailable, api, event_json, iter_sse, transport_message
from client.output import fail, note, out, print_json, print_record, when

TERMINAL_JOB = {"succeeded", "failed", "cancelled"}
WATCH_RECONNECTS = 5

app = typer.Typer(help="Asynchronous jobs: submit, status, watch the token stream, cancel.",
                  no_args_is_help=True)


@app.command("submit")
def jobs_submit(question: Question, model: Model = DEFAULT_MODEL, system: System = None,
                max_tokens: MaxTokens = None, temperature: Temperature = None, as_json: AsJson = False) -> None:
    """Submit a job (POST /v4/jobs); prints its id."""
    job = api().post("/v4/jobs", json=chat_body(question, model, system, max_tokens, temperature))
    print_json(job) if as_json else out(job["id"])


def print_job(job: dict) -> None:
    result = job.get("result") or {}
    usage = result.get("token_usage") or {}
    error = job.get("error")
    fields = [
        ("id", job.get("id")), ("status", job.get("status")), ("model", job.get("model")),
        ("created", when(job.get("created_at"))), ("started", when(job.get("started_at"))),
        ("finished", when(job.get("finished_at"))), ("attempts", job.get("attempts")),
    ]
    if job.get("status") == "throttled":
        fields += [("next try", when(job.get("next_try_at"))), ("throttled by", job.get("throttle_reason"))]
    if usage:
        fields.append(("tokens", f"{usage.get('prompt')} prompt + {usage.get('completion')} completion"))
    if error:
        fields.append(("error", error_text(error)))
    if result:
        fields.append(("answer", chunk_text(result)))
    print_record(fields)


@app.command("status")
def jobs_status(job_id: str, as_json: AsJson = False) -> None:
    """Show a job (GET /v4/jobs/{id})."""
    job = api().get(f"/v4/jobs/{job_id}")
    print_json(job) if as_json else print_job(job)


@app.command("cancel")
def jobs_cancel(job_id: str, as_json: AsJson = False) -> None:
    """Cancel a job (a finished job stays as it is); prints its status once it has stopped."""
    client = api()
    job = client.post(f"/v4/jobs/{job_id}/cancel")
    # A running job stops within about a quarter of a second: report where it ended up.
    deadline = time.monotonic() + 3
    while job.get("status") not in TERMINAL_JOB and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v4/jobs/{job_id}")
    print_json(job) if as_json else out(f"{job['id']} {job['status']}")


@app.command("watch")
def jobs_watch(job_id: str) -> None:
    """Follow a job's token stream from its start, printing the text as it arrives, then its final
    status (on stderr). Reconnects after a dropped connection where it left off. Exit code 0 when
    the job succeeded, 1 otherwise."""
    client = api()
    last_id: str | None = None
    drops = 0
    status: str | None = None
    error: Any = None
    wrote = False
    while status is None:
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        progressed = False
        try:
            with client.stream("GET", f"/v4/jobs/{job_id}/stream", headers=headers) as response:
                if response.status_code == 204:  # the job is over and every event was read
                    break
                client.check(response)
                for event in iter_sse(response):
                    if event.id:
                        last_id = event.id
                        progressed = True
                    data = event_json(event.data)
                    if event.event in ("message", "", None):
                        piece = chunk_text(data)
                        if piece:
                            out(piece, end="")
                            wrote = True
                    elif event.event == "end":
                        status = data.get("status", "succeeded")
                        break
                    elif event.event == "error":
                        status, error = "failed", data
                        break
                    elif event.event == "throttled":
                        note(f"[throttled: {data.get('reason', 'rate limited')}; next try at "
                             f"{when(data.get('next_try_at'))}]")
        except StreamUnavailable as exc:
            fail(f"the server did not answer with a stream: {exc}")
        except httpx.TransportError as exc:
            # Never connected at all: nothing to resume, say so now.
            if last_id is None and isinstance(exc, httpx.ConnectError) and drops == 0:
                fail(transport_message(exc, client.base_url))
            reason = transport_message(exc, client.base_url)
        else:
            if status is not None:
                break
            reason = "the stream ended early"
        drops = 0 if progressed else drops + 1
        if drops > WATCH_RECONNECTS:
            if wrote:
                out()
            fail(f"{reason}; gave up after {WATCH_RECONNECTS} reconnections")
        note(f"[{reason}; reconnecting after event {last_id or 0}]")
        time.sleep(min(0.25 * 2 ** drops, 4.0))
    if wrote:
        out()
    if status is None or (status == "failed" and error is None):
        job = client.get(f"/v4/jobs/{job_id}")
        status = job["status"]
        error = error or job.get("error")
    if status == "failed":
        fail(f"job {job_id} failed: {error_text(error)}")
    note(f"status: {status}")
    if status != "succeeded":
        raise typer.Exit(1)

