"""The ``chatfleet`` command, installed in the venv, run as a process against a real fleet."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy.devstack import free_port
from tests.conftest import ADMIN_KEY, DEV_KEY
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAST = ["--model", "gpt-4o-mini", "--max-tokens", "3"]


def chatfleet_bin() -> str:
    found = shutil.which("chatfleet", path=str(Path(sys.executable).parent))
    assert found, "the chatfleet command is not installed: pip install -e '.[test]'"
    return found


def cli_env(base_url: str | None = None, key: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")}
    if base_url is not None:
        env["CHATFLEET_BASE_URL"] = base_url
    if key is not None:
        env["CHATFLEET_API_KEY"] = key
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 30, stdin: str | None = None):
    return subprocess.run([chatfleet_bin(), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def cli(stack, fake):
    """Run ``chatfleet ARGS`` as the dev account (the fake provider reset for this test)."""
    def call(*args: str, key: str = DEV_KEY, timeout: float = 30, **extra: str):
        return run(list(args), cli_env(stack.base_url, key, **extra), timeout)
    call.env = cli_env(stack.base_url, DEV_KEY)
    return call


# --- chat ---------------------------------------------------------------------------------


def test_chat(cli, fake):
    r = cli("chat", "hello there", *FAST)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1 tok2\n"
    assert r.stderr == ""

    r = cli("chat", "hello there", *FAST, "--system", "be brief", "--temperature", "0.5")
    assert r.returncode == 0 and r.stdout == "tok0 tok1 tok2\n", r.stderr
    sent = fake.requests(family="openai")[-1]["body"]
    assert sent["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hello there"}]
    assert sent["temperature"] == 0.5 and sent["max_tokens"] == 3


def test_chat_stream_prints_tokens_as_they_arrive(cli, fake):
    r = cli("chat", "hello there", *FAST, "--stream")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1 tok2\n"

    # the second, last token 2.5 s after the first: well within the stack's 5 s idle timeout
    fake.config(tokens_per_s=0.4)
    proc = subprocess.Popen([chatfleet_bin(), "chat", "hi", "--model", "gpt-4o-mini", "--max-tokens", "2",
                             "--stream"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        while b"tok0" not in seen:
            chunk = os.read(proc.stdout.fileno(), 100)
            assert chunk, "the command ended before printing anything"
            seen += chunk
        assert proc.poll() is None, "the first token came only with the whole answer"
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert (seen + rest).decode() == "tok0 tok1\n"


def test_chat_reports_api_errors_in_one_line(cli):
    r = cli("chat", "hi", "--model", "no-such-model")
    assert_one_line_error(r, "400", "no-such-model")
    assert r.stdout == ""


def test_invalid_key_is_one_line_and_exit_1(cli):
    r = cli("chat", "hi", *FAST, key="cf-not-a-key")
    assert_one_line_error(r)
    assert r.stderr.strip() == "error: 401 invalid API key"
    assert r.stdout == ""


def test_unreachable_base_url_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["chat", "hi"], ["models"], ["jobs", "watch", "job_x"], ["batch", "list"]):
        r = run(args, cli_env(url, DEV_KEY), timeout=20)
        assert_one_line_error(r, f"cannot reach {url}")


def test_usage_errors_exit_2(cli):
    r = cli("usage", "--by", "week")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = cli("usage", "--start", "yesterday")
    assert r.returncode == 2 and "Traceback" not in r.stderr


# --- jobs ---------------------------------------------------------------------------------


def wait_job(cli, job_id: str) -> dict:
    def done():
        job = json.loads(cli("jobs", "status", job_id, "--json").stdout)
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None
    return wait_for(done, interval=0.1, what=f"job {job_id} to finish")


def test_jobs_submit_status_watch(cli):
    r = cli("jobs", "submit", "hello there", *FAST)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert job_id.startswith("job_") and r.stdout == job_id + "\n"

    watched = cli("jobs", "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == "tok0 tok1 tok2\n"
    assert watched.stderr.strip().splitlines()[-1] == "status: succeeded"

    job = wait_job(cli, job_id)
    assert job["status"] == "succeeded" and job["id"] == job_id
    assert job["result"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2"

    table = cli("jobs", "status", job_id)
    assert table.returncode == 0
    assert job_id in table.stdout and "succeeded" in table.stdout and "tok0 tok1 tok2" in table.stdout

    r = cli("jobs", "submit", "hi", *FAST, "--json")
    submitted = json.loads(r.stdout)
    assert submitted["id"].startswith("job_") and submitted["status"] == "queued"

    assert_one_line_error(cli("jobs", "status", "job_nope"), "404", "job_nope")


def test_failed_jobs_and_streams_end_in_one_error_line(cli, fake):
    fake.script([{"status": 400, "message": "no thanks", "times": 2}], family="openai")
    job_id = cli("jobs", "submit", "hi", *FAST).stdout.strip()
    r = cli("jobs", "watch", job_id)
    assert_one_line_error(r, f"job {job_id} failed: upstream_rejected", "HTTP 400")
    r = cli("chat", "hi", *FAST, "--stream")
    assert_one_line_error(r, "upstream_rejected", "HTTP 400")


def test_jobs_cancel(cli, fake):
    fake.config(tokens_per_s=5)
    job_id = cli("jobs", "submit", "hi", "--model", "gpt-4o-mini", "--max-tokens", "50").stdout.strip()
    r = cli("jobs", "cancel", job_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{job_id} cancelled\n"
    assert wait_job(cli, job_id)["status"] == "cancelled"
    watched = cli("jobs", "watch", job_id)
    assert watched.returncode == 1 and "status: cancelled" in watched.stderr


class Scripted(BaseHTTPRequestHandler):
    """A stand-in API for what the real fleet does not do on demand (dropping a connection, an
    absent stream): ``script(handler, method, path)`` answers, ``seen`` records requests."""

    protocol_version = "HTTP/1.1"
    script = None
    seen: list[tuple[str, str, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(("GET", self.path, self.headers.get("Last-Event-ID")))
        type(self).script(self, "GET", self.path)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).seen.append(("POST", self.path, None))
        type(self).script(self, "POST", self.path)

    def reply(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunked(self, body: bytes, finish: bool) -> None:
        """An SSE response; ``finish=False`` cuts the connection mid-body."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body) + (b"0\r\n\r\n" if finish else b""))
        self.wfile.flush()
        self.close_connection = not finish


def scripted_cli(script, args: list[str]):
    Scripted.script, Scripted.seen = staticmethod(script), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return run(args, cli_env(f"http://127.0.0.1:{server.server_port}", DEV_KEY))
    finally:
        server.shutdown()
        server.server_close()


def sse_chunk(text: str) -> str:
    return json.dumps({"chat_completion": {"message": {"role": "assistant", "content": text}}})


def test_jobs_watch_resumes_after_a_dropped_connection():
    def script(h, method, path):
        last = h.headers.get("Last-Event-ID")
        if last is None:  # the first token, then the connection breaks
            h.chunked(f"retry: 1000\n\nid: 1\ndata: {sse_chunk('tok0')}\n\n".encode(), finish=False)
        else:
            h.chunked((f"id: {int(last) + 1}\ndata: {sse_chunk(' tok1')}\n\n"
                       f"event: end\nid: {int(last) + 2}\ndata: {json.dumps({'status': 'succeeded'})}\n\n").encode(),
                      finish=True)

    r = scripted_cli(script, ["jobs", "watch", "job_x"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tok0 tok1\n"
    assert Scripted.seen == [("GET", "/v4/jobs/job_x/stream", None), ("GET", "/v4/jobs/job_x/stream", "1")]
    assert "reconnecting after event 1" in r.stderr and "status: succeeded" in r.stderr


def test_jobs_watch_stops_on_204_and_reports_the_job_status():
    def script(h, method, path):
        if path.endswith("/stream"):
            h.reply(204)
        else:
            h.reply(200, json.dumps({"id": "job_x", "status": "failed",
                                     "error": {"code": "timeout", "message": "too slow"}}).encode())

    r = scripted_cli(script, ["jobs", "watch", "job_x"])
    assert [(m, p) for m, p, _ in Scripted.seen] == [("GET", "/v4/jobs/job_x/stream"), ("GET", "/v4/jobs/job_x")]
    assert_one_line_error(r, "job job_x failed: timeout: too slow")
    assert r.stdout == ""


def test_batch_wait_polls_when_the_stream_is_unavailable(tmp_path):
    polls = []

    def batch(status: str, done: int) -> bytes:
        return json.dumps({"id": "batch_x", "object": "batch", "status": status, "errors": None,
                           "request_counts": {"total": 2, "completed": done, "failed": 0}}).encode()

    def script(h, method, path):
        if method == "POST":
            h.reply(201, batch("in_progress", 0))
        elif path.endswith("/stream"):
            h.reply(404, b'{"detail": "Not Found"}')
        else:
            polls.append(path)
            h.reply(200, batch("in_progress", 1) if len(polls) == 1 else batch("completed", 2))

    path = tmp_path / "two.jsonl"
    path.write_text(batch_line("x1") + "\n" + batch_line("x2") + "\n")
    r = scripted_cli(script, ["batch", "submit", str(path), "--wait"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "batch_x"
    assert r.stdout.splitlines()[-1].startswith("batch_x completed: 2 completed, 0 failed of 2")
    assert polls == ["/v4/batches/batch_x", "/v4/batches/batch_x"]


# --- models and admin + usage -------------------------------------------------------------


def test_models(cli):
    r = cli("models")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[1]
    for column in ("id", "family", "available", "missing_setting"):
        assert column in header
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("│")}
    assert "openai" in rows["gpt-4o-mini"] and "yes" in rows["gpt-4o-mini"]
    assert "local" in rows["smollm2-135m-instruct"]
    data = json.loads(cli("models", "--json").stdout)
    assert {"id", "family", "available", "missing_setting"} <= set(data[0])


def test_admin_bootstrap_then_chat_and_usage(stack, cli):
    admin_env = cli_env(stack.base_url, CHATFLEET_ADMIN_API_KEY=ADMIN_KEY)
    r = run(["admin", "create-account", "cli-team", "--rpm", "100", "--max-concurrency", "4"], admin_env)
    assert r.returncode == 0, r.stderr
    account_id = r.stdout.strip()
    assert account_id.startswith("acct_")
    with stack.admin() as admin:
        account = admin.get(f"/v4/admin/accounts/{account_id}").json()
    assert account["name"] == "cli-team"
    assert account["limits"] == {"rpm": 100, "tpm": None, "max_concurrency": 4, "budget_usd": None,
                                 "budget_period": None}

    r = run(["admin", "create-key", account_id], admin_env)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("cf-") and r.stdout == key + "\n"
    assert_one_line_error(run(["admin", "create-key", "acct_nope"], admin_env), "acct_nope", "not found")

    # The new key works, and its account starts with no usage.
    assert cli("chat", "hello there", *FAST, key=key).stdout == "tok0 tok1 tok2\n"
    assert cli("chat", "hello there", *FAST, "--stream", key=key).stdout == "tok0 tok1 tok2\n"

    r = cli("usage", "--csv", "--by", "model", key=key)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["model"] for row in rows] == ["gpt-4o-mini"]
    row = rows[0]
    assert (row["requests"], row["succeeded"], row["failed"], row["completion_tokens"]) == ("2", "2", "0", "6")
    assert int(row["total_tokens"]) == int(row["prompt_tokens"]) + 6 and float(row["cost_usd"]) > 0

    table = cli("usage", "--by", "model", "--by", "day", key=key)
    assert table.returncode == 0, table.stderr
    for column in ("day", "model", "requests", "succeeded", "failed", "cancelled", "prompt_tokens",
                   "completion_tokens", "total_tokens", "cost_usd"):
        assert column in table.stdout
    line = next(l for l in table.stdout.splitlines() if "gpt-4o-mini" in l)
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[2:6] == ["2", "2", "0", "0"] and cells[7] == "6"

    by_model = cli("usage", "--by", "model", "--model", "gpt-4o-mini", "--start", "2020-06-01", "--end", "2021-01-01",
                   key=key)
    assert by_model.returncode == 0 and "gpt-4o-mini" not in by_model.stdout  # nothing in that range


def test_admin_lists_accounts_and_revokes_keys(stack, cli):
    admin_env = cli_env(stack.base_url, CHATFLEET_ADMIN_API_KEY=ADMIN_KEY)
    account_id = run(["admin", "create-account", "cli-listed", "--tpm", "5000"], admin_env).stdout.strip()
    listed = json.loads(run(["admin", "accounts", "--json"], admin_env).stdout)
    mine = next(a for a in listed if a["id"] == account_id)
    assert mine["name"] == "cli-listed" and mine["limits"]["tpm"] == 5000
    table = run(["admin", "accounts"], admin_env)
    assert table.returncode == 0 and account_id in table.stdout and "5000" in table.stdout

    created = run(["admin", "create-key", account_id], admin_env)
    key = created.stdout.strip()
    key_id = created.stderr.split()[1]
    assert key_id.startswith("key_")
    assert cli("models", key=key).returncode == 0
    r = run(["admin", "revoke-key", key_id], admin_env)
    assert r.returncode == 0 and r.stdout == f"{key_id} revoked\n", r.stderr
    assert_one_line_error(cli("models", key=key), "401", "invalid API key")
    assert_one_line_error(run(["admin", "revoke-key", key_id], admin_env), "404", key_id)


def test_admin_sets_budgets_and_scoped_keys(stack, cli):
    admin_env = cli_env(stack.base_url, CHATFLEET_ADMIN_API_KEY=ADMIN_KEY)
    account_id = run(["admin", "create-account", "cli-budget", "--budget-usd", "12.5", "--budget-period", "day"],
                     admin_env).stdout.strip()
    r = run(["admin", "set-limits", account_id, "--budget-usd", "20"], admin_env)
    assert r.returncode == 0, r.stderr
    with stack.admin() as admin:
        limits = admin.get(f"/v4/admin/accounts/{account_id}").json()["limits"]
    assert (limits["budget_usd"], limits["budget_period"]) == (20.0, "day")  # the period kept
    created = run(["admin", "create-key", account_id, "--name", "ci", "--model", "gpt-4o-mini",
                   "--budget-usd", "1", "--budget-period", "total", "--rpm", "30"], admin_env)
    assert created.returncode == 0, created.stderr
    key, key_id = created.stdout.strip(), created.stderr.split()[1]
    r = run(["admin", "update-key", key_id, "--all-models", "--json"], admin_env)
    shown = json.loads(r.stdout)
    assert (shown["name"], shown["models"], shown["limits"]["budget_usd"], shown["limits"]["rpm"]) == (
        "ci", None, 1.0, 30)
    assert cli("chat", "hello there", *FAST, key=key).stdout == "tok0 tok1 tok2\n"
    refused = run(["admin", "create-key", account_id, "--budget-period", "week"], admin_env)
    assert refused.returncode == 2 and "--budget-period" in refused.stderr and "Traceback" not in refused.stderr


def test_admin_needs_the_admin_key(stack):
    assert_one_line_error(run(["admin", "accounts"], cli_env(stack.base_url)),
                          "no admin API key", "CHATFLEET_ADMIN_API_KEY")
    # An account's key is not an admin key.
    assert_one_line_error(run(["admin", "--admin-key", DEV_KEY, "accounts"], cli_env(stack.base_url)), "401")


def test_the_admin_key_is_taken_after_the_command_too(stack):
    """Where users put it, and where the error tells them to."""
    for argv in (["admin", "accounts", "--admin-key", ADMIN_KEY, "--json"],
                 ["admin", "--admin-key", ADMIN_KEY, "accounts", "--json"]):
        r = run(argv, cli_env(stack.base_url))
        assert r.returncode == 0, r.stderr
        assert isinstance(json.loads(r.stdout), list)
    assert_one_line_error(run(["admin", "accounts", "--admin-key", DEV_KEY], cli_env(stack.base_url)), "401")


def test_admin_with_unreachable_api_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    r = run(["admin", "create-account", "x"], cli_env(url, CHATFLEET_ADMIN_API_KEY="cf-admin-x"))
    assert_one_line_error(r, f"cannot reach {url}")


# --- batches ----------------------------------------------------------------------------------


def batch_line(custom_id: str, max_tokens: int = 3) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v4/chat-completions",
                       "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {custom_id}"}],
                                "model_parameters": {"max_tokens": max_tokens}}})


@pytest.fixture
def batch_cli(cli):
    return cli


def test_batch_submit_wait_and_results(batch_cli, tmp_path):
    cli = batch_cli
    path = tmp_path / "five.jsonl"
    path.write_text("".join(batch_line(f"a{i}") + "\n" for i in range(5)))
    r = cli("batch", "submit", str(path), "--wait", "--metadata", "team=cli", "--metadata", "run=1")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    batch_id = out[0]
    assert batch_id.startswith("batch_")
    assert out[-1].startswith(f"{batch_id} completed: 5 completed, 0 failed of 5")
    assert "Traceback" not in r.stderr

    results = cli("batch", "results", batch_id)
    assert results.returncode == 0, results.stderr
    lines = [json.loads(l) for l in results.stdout.splitlines() if l]
    assert len(lines) == 5
    by_id = {l["custom_id"]: l for l in lines}
    assert set(by_id) == {f"a{i}" for i in range(5)}
    for l in lines:
        assert l["response"]["status_code"] == 200 and l["error"] is None
        assert l["response"]["body"]["chat_completion"]["message"]["content"] == "tok0 tok1 tok2"

    saved = tmp_path / "results.jsonl"
    assert cli("batch", "results", batch_id, "-o", str(saved)).returncode == 0
    assert saved.read_text() == results.stdout
    errors = cli("batch", "errors", batch_id)
    assert errors.returncode == 0 and errors.stdout.strip() == ""

    status = json.loads(cli("batch", "status", batch_id, "--json").stdout)
    assert status["status"] == "completed" and status["metadata"] == {"team": "cli", "run": "1"}
    assert status["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    table = cli("batch", "status", batch_id)
    assert batch_id in table.stdout and "completed" in table.stdout


def test_batch_invalid_file_lists_the_bad_lines(batch_cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(batch_line("b1") + "\n{not json\n" + batch_line("b3") + "\n")
    for args in ([], ["--wait"]):
        r = batch_cli("batch", "submit", str(path), *args)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        assert "line 2:" in r.stdout + r.stderr
        assert "line 1:" not in r.stderr and "line 3:" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: batch ")


def test_batch_list_follows_pages(batch_cli, tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(batch_line("l1") + "\n")
    ids = [batch_cli("batch", "submit", str(path)).stdout.strip() for _ in range(3)]
    assert all(i.startswith("batch_") for i in ids)
    r = batch_cli("batch", "list", "--limit", "1")
    assert r.returncode == 0, r.stderr
    for batch_id in ids:
        assert batch_id in r.stdout
    listed = json.loads(batch_cli("batch", "list", "--limit", "2", "--json").stdout)
    listed_ids = [b["id"] for b in listed]
    assert set(ids) <= set(listed_ids) and len(listed_ids) == len(set(listed_ids))


def test_batch_cancel_ends_a_waiting_submit_with_exit_1(batch_cli, fake, tmp_path):
    # Each line takes 20 s: however slow the machine, the cancel arrives while they run.
    fake.config(tokens_per_s=2, tokens=40)
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(batch_line(f"s{i}", 40) + "\n" for i in range(4)))
    proc = subprocess.Popen([chatfleet_bin(), "batch", "submit", str(path), "--wait"], env=batch_cli.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        batch_id = proc.stdout.readline().strip()
        assert batch_id.startswith("batch_"), proc.stderr.read() if proc.poll() is not None else batch_id
        r = batch_cli("batch", "cancel", batch_id)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() in ([batch_id, "cancelling"], [batch_id, "cancelled"])
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: {batch_id} cancelled")
    status = json.loads(batch_cli("batch", "status", batch_id, "--json").stdout)
    assert status["status"] == "cancelled"
