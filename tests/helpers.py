"""What several test modules share: waiting on a condition, reading the fleet's SSE streams and
jobs, the requests the tests send, and the scenarios more than one fleet layout runs.

Test modules import from here (or from ``tests/conftest.py``, ``tests/recording.py``,
``tests/unit/jobstores.py``, ``tests/integration/adapter_harness.py``), never from one another:
``tests/unit/test_suite_layout.py`` checks it.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import threading
import time

import httpx

from shared import keys

# --- waiting --------------------------------------------------------------------------------


# How long a test waits for what it expects before failing. Generous: a condition that holds
# ends the wait at once, and a busy machine (another fleet running beside this one) is slow.
DEADLINE = 60.0
# A job of the local model that generates hundreds of tokens: CPU-bound, the slowest of all on a
# busy machine (within the suite's 300 s per test).
LONG_JOB_DEADLINE = 240.0


def wait_for(predicate, timeout: float = DEADLINE, interval: float = 0.05, what: str = "condition"):
    """``predicate()``'s first true value, asked every ``interval`` s; AssertionError naming
    ``what`` once ``timeout`` s passed without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def async_wait_for(predicate, timeout: float = DEADLINE, interval: float = 0.01, what: str = "condition"):
    """``wait_for`` on an event loop: the loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the loop would wait, straight to its next
    timer: timers fire in the order of their deadlines, with the delays between them exactly as
    asked, however slow the machine; and a test of timeouts takes no time. For code that waits
    only on timers (no sockets: time jumps past a wait for I/O)."""

    def __init__(self):
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualClockLoop):
        super().__init__()
        self.loop = loop

    def select(self, timeout=None):
        if timeout is None:  # nothing scheduled: only another thread can wake the loop
            return super().select(None)
        ready = super().select(0)
        if not ready:
            self.loop.now += timeout
        return ready


def run_on_virtual_clock(coro):
    """``asyncio.run(coro)`` on a VirtualClockLoop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)


# --- requests -------------------------------------------------------------------------------

LOCAL = "smollm2-135m-instruct"

# A short completion from the fake provider (gpt-4o-mini): three tokens, "tok0 tok1 tok2".
FAST = {"model": "gpt-4o-mini", "messages": [{"content": "hello there"}], "model_parameters": {"max_tokens": 3}}

# The model each provider family's tests use.
FAMILY_MODELS = {
    "openai": "gpt-4o",
    "anthropic": "claude-3-5-sonnet-20241022",
    "gemini": "gemini-1.5-pro-002",
    "mistral": "mistral-large-latest",
    "bedrock": "llama3-1-405b-instruct-v1",
    "llm_engine": "llama-3-1-8b-instruct",
}


def ask(content: str = "What is the capital of France?", **extra) -> dict:
    """A chat completion of the local model."""
    return {"model": LOCAL, "messages": [{"role": "user", "content": content}], **extra}


def long_job(max_tokens: int) -> dict:
    """A job of the local model's long-running variant."""
    return {"model": "smollm2-longrun", "messages": [{"content": "Tell me everything about rivers."}],
            "model_parameters": {"max_tokens": max_tokens}}


def line(custom_id: str, max_tokens: int = 3, model: str = "gpt-4o-mini", **body) -> dict:
    """A batch line."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v4/chat-completions",
            "body": {"model": model, "messages": [{"content": f"question {custom_id}"}],
                     "model_parameters": {"max_tokens": max_tokens}, **body}}


# --- SSE ------------------------------------------------------------------------------------


def iter_sse(response: httpx.Response):
    """Parse SSE events as they arrive: {'event': name|None, 'id': str|None, 'data': str}."""
    current = {"event": None, "id": None, "data": []}
    for line in response.iter_lines():
        if line == "":
            if current["data"]:
                yield {**current, "data": "\n".join(current["data"])}
            current = {"event": None, "id": None, "data": []}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"].append(value)
            elif field in ("event", "id"):
                current[field] = value


def read_sse(response: httpx.Response, limit: int | None = None) -> list[dict]:
    events = []
    for event in iter_sse(response):
        events.append(event)
        if limit is not None and len(events) >= limit:
            break
    return events


def content_of(events: list[dict]) -> str:
    return "".join(json.loads(e["data"])["chat_completion"]["message"]["content"]
                   for e in events if e["event"] is None)


# --- the fleet's logs -----------------------------------------------------------------------


def log_lines(stack, name: str) -> list[str]:
    return stack.fleet.logs[name].read_text(errors="replace").splitlines()


def json_lines(stack, name: str) -> list[dict]:
    """The JSON lines of process ``name``'s log (the fleet logs JSON by default)."""
    return [json.loads(line) for line in log_lines(stack, name) if line.startswith("{")]


# --- jobs, batches, accounts ----------------------------------------------------------------


def poll_until_done(client: httpx.Client, job_id: str, timeout: float = DEADLINE) -> dict:
    def done():
        job = client.get(f"/v4/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None
    return wait_for(done, timeout, 0.05, f"job {job_id} to finish")


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = DEADLINE) -> dict:
    def done():
        b = client.get(f"/v4/batches/{batch_id}").json()
        return b if b["status"] in ("completed", "failed", "expired", "cancelled") else None
    return wait_for(done, timeout, 0.1, f"batch {batch_id}")


def results(client: httpx.Client, batch_id: str, which: str = "results") -> list[dict]:
    r = client.get(f"/v4/batches/{batch_id}/{which}")
    assert r.status_code == 200
    return [json.loads(l) for l in r.text.splitlines() if l]


def new_account(stack, **limits) -> tuple[str, str]:
    """(account id, API key) of a fresh account with these limits."""
    with stack.admin() as admin:
        r = admin.post("/v4/admin/accounts", json={"name": "team", "limits": limits})
        assert r.status_code == 201, r.text
        account = r.json()
        r = admin.post(f"/v4/admin/accounts/{account['id']}/api-keys")
        assert r.status_code == 201
        return account["id"], r.json()["key"]


# --- scenarios that several fleet layouts run -----------------------------------------------


def assert_jobs_streams_batches_and_usage_work(stack) -> dict:
    """A sync completion, a job and its stream, a 3-line batch and the usage of all five, on
    ``stack``; returns the job."""
    with stack.client() as client:
        sync = client.post("/v4/chat-completions", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 4}))
        assert sync.status_code == 200, sync.text
        assert sync.json()["chat_completion"]["message"]["content"] == "tok0 tok1 tok2 tok3"
        job = client.post("/v4/jobs", json=ask(model="gpt-4o-mini", model_parameters={"max_tokens": 5})).json()
        done = poll_until_done(client, job["id"])
        assert done["status"] == "succeeded" and done["attempts"] == 1
        with client.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
            events = read_sse(r)
        assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
        batch = client.post("/v4/batches", json={"requests": [line(f"c{i}") for i in range(3)]}).json()
        assert wait_batch(client, batch["id"])["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert len(results(client, batch["id"])) == 3
        usage = client.get("/v4/usage", params={"group_by": "model"}).json()
        counted = {row["model"]: row["requests"] for row in usage["data"]}
        assert counted == {"gpt-4o-mini": 5}, usage
    return job


def assert_a_worker_killed_mid_job_loses_nothing(stack) -> None:
    """A local-model job followed by a subscriber; its worker SIGKILLed after 10 events and
    another started: the job ends succeeded on its second attempt, the stream without gap or
    duplicate."""
    with stack.client() as client:
        job = client.post("/v4/jobs", json=long_job(200)).json()
        events: list[dict] = []
        seen_10 = threading.Event()

        def subscribe():
            with stack.client() as c, c.stream("GET", f"/v4/jobs/{job['id']}/stream") as r:
                for e in iter_sse(r):
                    events.append(e)
                    if len(events) == 10:
                        seen_10.set()

        follower = threading.Thread(target=subscribe)
        follower.start()
        assert seen_10.wait(DEADLINE), stack.logs()
        stack.fleet.kill("worker-local")
        stack.start_worker("worker-local-2", [keys.QUEUE_LOCAL], 2)
        done = poll_until_done(client, job["id"], timeout=LONG_JOB_DEADLINE)
        follower.join(DEADLINE)
    assert not follower.is_alive()
    assert done["status"] == "succeeded", stack.logs()
    assert done["attempts"] == 2, stack.logs()
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert content_of(events) == done["result"]["chat_completion"]["message"]["content"]
