"""``chatfleet``: the fleet from the command line.

Talks to the API over HTTP (base URL and key from ``CHATFLEET_BASE_URL`` / ``CHATFLEET_API_KEY``
or ``--base-url`` / ``--api-key``), except ``chatfleet admin ...``, which writes accounts and keys
straight into the fleet's Redis (``CHATFLEET_REDIS_URL``) for operators on the machine.

Results go to stdout (answers, ids, tables, JSON, JSONL, CSV); progress and notes go to stderr.
Any failure is one line on stderr, ``error: ...``, and exit code 1 (2 for a usage error), never a
traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "smollm2-135m-instruct"
TERMINAL_JOB = {"succeeded", "failed", "cancelled"}
TERMINAL_BATCH = {"completed", "failed", "expired", "cancelled"}
WATCH_RECONNECTS = 5


class CLIError(Exception):
    """A failure to report as one ``error: ...`` line (exit code 1)."""


class StreamUnavailable(Exception):
    """An SSE endpoint that is not there (or answered something else than a stream)."""


# --- output ---------------------------------------------------------------------------------


def _console(stderr: bool = False):
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


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


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
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ").replace("+00:00", "").rstrip("Z")


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None,
                right: set[str] = frozenset()) -> None:
    from rich.table import Table

    if title:
        out(title)
    table = Table()
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=name in ("id", "job", "batch"))
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    _console().print(table)


def print_record(fields: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in fields:
        table.add_row(name, _cell(value))
    _console().print(table)


# --- HTTP -----------------------------------------------------------------------------------


def _detail(response: httpx.Response) -> str:
    """What the API said went wrong, in one line."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's 422: [{"loc": [...], "msg": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        if "message" in detail:
            return str(detail["message"])
        return json.dumps(detail)
    return " ".join(str(detail).split())


def _transport_message(exc: Exception, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)) or "connection failed"
        reason = reason[0].lower() + reason[1:]
        return f"cannot reach {url}: {reason}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"invalid base URL {url!r}: {exc}"
    reason = str(exc) or type(exc).__name__
    return f"the connection to {url} broke: {reason}"


class Api:
    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = httpx.Timeout(timeout, connect=10.0)
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if not self.api_key:
            fail("no API key: set CHATFLEET_API_KEY or pass --api-key")
        if self._client is None:
            try:
                self._client = httpx.Client(base_url=self.base_url, headers={"x-api-key": self.api_key},
                                            timeout=self.timeout)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as exc:
                fail(f"invalid base URL {self.base_url!r}: {exc}")
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        fail(f"{response.status_code} {_detail(response)}")

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.check(self.client.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            fail(_transport_message(exc, self.base_url))
        except httpx.InvalidURL as exc:
            fail(f"invalid base URL {self.base_url!r}: {exc}")

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs).json()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """A streamed response, its status already checked (transport errors are left to the
        caller, which may want to reconnect)."""
        try:
            cm = self.client.stream(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            fail(f"invalid base URL {self.base_url!r}: {exc}")
        with cm as response:
            if not response.is_success and response.status_code != 204:
                response.read()
            yield response

    def download(self, path: str, output: Path | None) -> None:
        """Copy a (JSONL) body to a file or stdout as it arrives."""
        try:
            with self.stream("GET", path) as response:
                self.check(response)
                if output is None:
                    for chunk in response.iter_bytes():
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.buffer.flush()
                    return
                tmp = output.with_name(output.name + ".part")
                try:
                    with open(tmp, "wb") as f:
                        for chunk in response.iter_bytes():
                            f.write(chunk)
                    os.replace(tmp, output)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                    fail(f"cannot write {output}: {exc.strerror or exc}")
        except httpx.TransportError as exc:
            fail(_transport_message(exc, self.base_url))


def iter_sse(response: httpx.Response):
    """The stream's events, skipping those without data (``retry:`` hints)."""
    from httpx_sse import EventSource, SSEError

    try:
        for event in EventSource(response).iter_sse():
            if event.data:
                yield event
    except SSEError as exc:
        raise StreamUnavailable(str(exc)) from None


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        fail(f"the server sent an event that is not JSON: {data[:200]!r}")


# --- the app --------------------------------------------------------------------------------

app = typer.Typer(
    name="chatfleet", help="Command-line client of a chatfleet LLM fleet.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
jobs_app = typer.Typer(help="Asynchronous jobs: submit, status, watch the token stream, cancel.",
                       no_args_is_help=True)
batch_app = typer.Typer(help="Batches of requests from a JSONL file.", no_args_is_help=True)
admin_app = typer.Typer(help="Operator bootstrap: accounts and API keys, written straight into Redis "
                             "(CHATFLEET_REDIS_URL); no API or admin key involved.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(batch_app, name="batch")
app.add_typer(admin_app, name="admin")

_state: dict[str, Any] = {}


@app.callback()
def root(
    base_url: Annotated[str, typer.Option("--base-url", envvar="CHATFLEET_BASE_URL", show_envvar=True,
                                          help="the fleet's API")] = DEFAULT_BASE_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="CHATFLEET_API_KEY", show_envvar=True,
                                                help="API key (x-api-key)", show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for an answer")] = 620.0,
) -> None:
    _state["api"] = Api(base_url, api_key, timeout)


def api() -> Api:
    return _state["api"]


# --- chat and jobs --------------------------------------------------------------------------

Model = Annotated[str, typer.Option("--model", "-m", help="model id (see `chatfleet models`)")]
System = Annotated[str | None, typer.Option("--system", "-s", help="system prompt", show_default=False)]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", min=1, help="at most this many tokens",
                                               show_default=False)]
Temperature = Annotated[float | None, typer.Option("--temperature", "-t", min=0, max=1, show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the JSON the API answered")]
Question = Annotated[str, typer.Argument(help="the user message ('-' reads it from stdin)", show_default=False)]


def chat_body(question: str, model: str, system: str | None, max_tokens: int | None,
              temperature: float | None) -> dict[str, Any]:
    if question == "-":
        question = sys.stdin.read()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    params = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
    if params:
        body["model_parameters"] = params
    return body


def chunk_text(data: dict) -> str:
    return ((data.get("chat_completion") or {}).get("message") or {}).get("content") or ""


def error_text(data: Any) -> str:
    if isinstance(data, dict):
        code, message = data.get("code"), data.get("message") or data.get("detail")
        return f"{code}: {message}" if code and message else str(message or code or data)
    return str(data)


@app.command()
def chat(question: Question, model: Model = DEFAULT_MODEL, stream: Annotated[bool, typer.Option(
             "--stream", help="print the answer token by token as it is generated")] = False,
         system: System = None, max_tokens: MaxTokens = None, temperature: Temperature = None) -> None:
    """Ask a model (POST /v4/chat-completions) and print its answer."""
    body = chat_body(question, model, system, max_tokens, temperature)
    client = api()
    if not stream:
        out(chunk_text(client.post("/v4/chat-completions", json=body)))
        return
    body["stream"] = True
    text = ""
    try:
        with client.stream("POST", "/v4/chat-completions", json=body) as response:
            client.check(response)
            for event in iter_sse(response):
                if event.event == "error":
                    if text:
                        out()
                    fail(error_text(_json(event.data)))
                if event.event not in ("message", "", None):
                    continue
                piece = chunk_text(_json(event.data))
                text += piece
                out(piece, end="")
    except httpx.TransportError as exc:
        if text:
            out()
        fail(_transport_message(exc, client.base_url))
    except StreamUnavailable as exc:
        fail(f"the server did not answer with a stream: {exc}")
    out()


@jobs_app.command("submit")
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


@jobs_app.command("status")
def jobs_status(job_id: str, as_json: AsJson = False) -> None:
    """Show a job (GET /v4/jobs/{id})."""
    job = api().get(f"/v4/jobs/{job_id}")
    print_json(job) if as_json else print_job(job)


@jobs_app.command("cancel")
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


@jobs_app.command("watch")
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
                    data = _json(event.data)
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
                fail(_transport_message(exc, client.base_url))
            reason = _transport_message(exc, client.base_url)
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


# --- usage and models -----------------------------------------------------------------------


class GroupBy(str, Enum):
    model = "model"
    day = "day"


USAGE_COUNTERS = ["requests", "succeeded", "failed", "cancelled", "prompt_tokens", "completion_tokens",
                  "total_tokens", "cost_usd"]


@app.command()
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


@app.command()
def models(as_json: AsJson = False) -> None:
    """The models of the catalog and whether their provider is configured (GET /v4/models)."""
    data = api().get("/v4/models").get("data") or []
    if as_json:
        print_json(data)
        return
    print_table(["id", "family", "available", "missing_setting"],
                [[m.get("id"), m.get("family"), m.get("available"), m.get("missing_setting")] for m in data])


# --- batches --------------------------------------------------------------------------------


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
                    batch = _json(event.data)
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
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} req/s" if task.speed else "-- req/s")

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), RateColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=_console(stderr=True), transient=False,
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


@batch_app.command("submit")
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


@batch_app.command("status")
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


@batch_app.command("results")
def batch_results(batch_id: str, output: Output = None) -> None:
    """The batch's results as JSONL, one line per request (GET /v4/batches/{id}/results)."""
    api().download(f"/v4/batches/{batch_id}/results", output)


@batch_app.command("errors")
def batch_errors_cmd(batch_id: str, output: Output = None) -> None:
    """The batch's failed requests as JSONL (GET /v4/batches/{id}/errors)."""
    api().download(f"/v4/batches/{batch_id}/errors", output)


@batch_app.command("cancel")
def batch_cancel(batch_id: str, as_json: AsJson = False) -> None:
    """Cancel a batch: requests not yet run are dropped."""
    batch = api().post(f"/v4/batches/{batch_id}/cancel")
    print_json(batch) if as_json else out(f"{batch['id']} {batch['status']}")


@batch_app.command("list")
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


# --- admin (Redis, no API) ------------------------------------------------------------------


def _os_reason(exc: BaseException) -> str | None:
    """'connection refused' and the like, from the OS error behind a Redis client error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, TimeoutError):
            return "timed out"
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror[0].lower() + exc.strerror[1:]
        exc = exc.__cause__ or exc.__context__
    return None


def _redis_call(redis_url: str | None, work):
    """Run ``work(redis)`` (a coroutine function) against the fleet's Redis."""
    import asyncio

    import redis.exceptions

    from shared.connections import async_redis

    if redis_url is None:
        from pydantic import ValidationError

        from shared.settings import get_settings
        try:
            redis_url = get_settings().redis_url
        except ValidationError as exc:
            fail(f"invalid CHATFLEET_ settings: {exc.errors()[0].get('msg')}")

    async def run():
        client = async_redis(redis_url, socket_connect_timeout=5, socket_timeout=10, retry_on_timeout=False)
        try:
            await client.ping()
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except redis.exceptions.AuthenticationError as exc:
        fail(f"Redis at {redact(redis_url)} refused the credentials: {exc}")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        reason = _os_reason(exc) or str(exc).rstrip(".") or type(exc).__name__
        fail(f"cannot reach Redis at {redact(redis_url)}: {reason}")
    except ValueError as exc:
        fail(f"invalid Redis URL {redact(redis_url)!r}: {exc}")
    except redis.exceptions.RedisError as exc:
        fail(f"Redis at {redact(redis_url)}: {exc}")


RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="default: CHATFLEET_REDIS_URL",
                                              show_default=False)]


@admin_app.command("create-account")
def admin_create_account(
    name: str, rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute",
                                                        show_default=False)] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="tokens per minute", show_default=False)] = None,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", min=1, help="jobs running at once",
                                                        show_default=False)] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Create an account; prints its id (then `chatfleet admin create-key ID`)."""
    from shared.accounts import create_account

    if not name.strip():
        raise typer.BadParameter("the name may not be empty", param_hint="NAME")
    limits = {k: v for k, v in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency)) if v is not None}

    async def work(redis):
        return await create_account(redis, name, limits)

    out(_redis_call(redis_url, work))


@admin_app.command("create-key")
def admin_create_key(account_id: str, redis_url: RedisUrl = None) -> None:
    """Create an API key for an account; prints the key, which is shown this once."""
    from shared.accounts import add_api_key, get_account

    async def work(redis):
        if await get_account(redis, account_id) is None:
            fail(f"account {account_id!r} not found")
        return await add_api_key(redis, account_id)

    key_id, secret = _redis_call(redis_url, work)
    out(secret)
    note(f"key {key_id} for {account_id}: shown this once, only its digest is stored")


# --- entry point ----------------------------------------------------------------------------


def main() -> None:
    code = 0
    try:
        app(prog_name="chatfleet")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CLIError as exc:
        note(f"error: {exc}")
        code = 1
    except KeyboardInterrupt:
        note("error: interrupted")
        code = 130
    except BrokenPipeError:
        # stdout went away (| head): nothing left to say to anyone.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        code = 1
    except Exception as exc:  # a bug, but still one line and no traceback
        note(f"error: unexpected {type(exc).__name__}: {exc}")
        code = 1
    finally:
        if "api" in _state:
            with contextlib.suppress(Exception):
                _state["api"].close()
    sys.exit(code)


if __name__ == "__main__":
    main()
