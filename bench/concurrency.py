"""How many concurrent streaming provider calls one worker process holds, and how late its tokens are.

    .venv/bin/python -m bench.concurrency [--levels 100 500 1000] [--tokens 100] [--rate 20]
        [--order jobs-first|worker-first] [--no-subscribers]

The fake provider streams 100 tokens per call at 20 tokens/s (5 s per call, first token at
once). For each level, one worker process is started with ``-c level+50`` (and as many Redis
connections), ``level`` jobs are submitted (``POST /v4/jobs``, gpt-4o-mini, max_tokens 100; the
job index is in the message text) and the benchmark follows every job's SSE stream
(``GET /v4/jobs/{id}/stream``) through one API process, recording when each token event
arrives. The provider emits token i of a call at ``t0 + i / rate``, ``t0`` being when the fake
received the call (from its request log; calls are matched to jobs by the message text), so

    relay latency = arrival at the client - emission by the provider

covers worker → Redis → API → client. "after ramp" takes only the tokens emitted once the last
call had started: while the worker is still starting calls (claims, admissions, requests),
the tokens of the calls already running wait behind that work on the same loop. Prints, per
level: jobs completed, tokens received vs expected (and lost, duplicated), relay latency
p50/p99, the worker's peak RSS, the peak number of calls open at once at the provider, how long
the worker took to start all the calls (first to last call received by the fake), the span from
the first call to the last token received (ideally the length of one call) and the tokens
relayed per second over it, the cores the worker used meanwhile and its CPU time per token
relayed (all its work, the calls' starts and ends included, over the tokens received), the
API's CPU time per token it relayed to the subscribers (its SSE streams: the pub/sub reads,
the replay, the writes), errors; then the cores each process used. Each level's worker is stopped before the next.

By default (``--order jobs-first``) every job is submitted and every stream opened before the
level's worker starts, so that the worker is offered all the calls at once and the API is not
taking submissions while it relays: "peak calls" is then how many calls the worker itself holds
open together (it takes the jobs off the queue at its own pace). ``--order worker-first``
starts the worker first and submits the jobs to it (50 submitters), each stream opened right
after its submission; on 2 cores the calls then open only as fast as the API, busy relaying,
accepts submissions (~60 per second at 1,000), which bounds "peak calls" rather than the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from dataclasses import dataclass, field

import httpx
import orjson

from bench._stack import (
    KEY,
    BenchStack,
    CpuWindow,
    peak_rss_mib,
    percentile,
    raise_open_files,
    run_async,
    table,
)

MODEL = "gpt-4o-mini"
JOB_TEXT = re.compile(r"^job (\d+):")
TOKEN = re.compile(r"tok(\d+)")


@dataclass
class Follow:
    index: int
    job_id: str = ""
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    error: str = ""
    opened: bool = False
    detail: str = ""  # for a stream that broke: when, after what
    status: str = ""  # without subscribers: the job's final status


async def submit(client: httpx.AsyncClient, f: Follow, tokens: int, gate: asyncio.Semaphore) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"job {f.index}: count to {tokens}"}],
            "model_parameters": {"max_tokens": tokens}}
    async with gate:
        try:
            r = await client.post("/v4/jobs", json=body)
        except httpx.HTTPError as exc:
            f.error = f"submit: {type(exc).__name__}"
            return
    if r.status_code != 202:
        f.error = f"submit: HTTP {r.status_code}"
        return
    f.job_id = r.json()["id"]


async def job_status(client: httpx.AsyncClient, f: Follow, deadline: float) -> None:
    """Without subscribers: the job's final status in ``f.status`` (polled until it has one)."""
    while f.job_id and time.monotonic() < deadline:
        try:
            r = await client.get(f"/v4/jobs/{f.job_id}")
            if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed", "cancelled"):
                f.status = r.json()["status"]
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)


class _Recorder(asyncio.Protocol):
    """Keeps what arrives on a connection, with its arrival time; nothing else per read."""

    def __init__(self, f: Follow, request: bytes, done: asyncio.Future):
        self.f = f
        self.request = request
        self.done = done
        self.append = f.chunks.append

    def connection_made(self, transport) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.append((time.time(), data))

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def follow(host: str, port: int, f: Follow) -> None:
    """``GET /v4/jobs/{id}/stream`` on a connection of its own (``connection: close``: the API
    closes it after the job's last event), recording raw arrivals; the HTTP framing and the
    events are taken apart after the run (``dechunk``, ``parse``). A subscriber that does no
    work per read: at 1,000 streams httpx's per-chunk layers made this process, not the fleet,
    the bottleneck (it fell seconds behind what the API had sent)."""
    if not f.job_id:
        return
    requested = time.time()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    request = (f"GET /v4/jobs/{f.job_id}/stream HTTP/1.1\r\nhost: {host}:{port}\r\nx-api-key: {KEY}\r\n"
               "accept: text/event-stream\r\nconnection: close\r\n\r\n").encode()
    try:
        transport, _ = await loop.create_connection(lambda: _Recorder(f, request, done), host, port)
    except OSError as exc:
        f.error = f"stream: connect {type(exc).__name__}"
        return
    f.opened = True
    try:
        exc = await done
    finally:
        transport.close()
    if exc is not None:
        f.error = f"stream: {type(exc).__name__}"
        f.detail = (f"job {f.job_id}: {exc!r}, {time.time() - requested:.1f} s after the request, "
                    f"{len(f.chunks)} chunks received")


def dechunk(f: Follow) -> None:
    """Replace ``f.chunks`` (raw arrivals: status line, headers, chunked body) by the body's
    bytes, each piece stamped with the arrival of the read that completed it."""
    raw = b"".join(c for _, c in f.chunks)
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        f.error = f.error or "stream: no response"
        f.chunks = []
        return
    status = raw.split(b" ", 2)[1:2]
    if status != [b"200"]:
        f.error = f.error or f"stream: HTTP {status[0].decode() if status else '?'}"
        f.chunks = []
        return
    # Arrival time of each byte offset: the time of the read that brought it.
    ends, times, total = [], [], 0
    for t, c in f.chunks:
        total += len(c)
        ends.append(total)
        times.append(t)
    body: list[tuple[float, bytes]] = []
    pos, read = head_end + 4, 0
    while True:
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0:
            break
        size = int(raw[pos:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        start, stop = line_end + 2, line_end + 2 + size
        if stop > len(raw):
            break  # cut off: what is there of the chunk was not delivered as an event anyway
        while ends[read] < stop:
            read += 1
        body.append((times[read], raw[start:stop]))
        pos = stop + 2
    f.chunks = body


def parse(f: Follow) -> tuple[list[tuple[float, int]], str]:
    """(arrival time, token index) of every token received, and how the stream ended."""
    tokens: list[tuple[float, int]] = []
    ending = ""
    buf = b""
    for t, chunk in f.chunks:
        buf += chunk
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            event, data = "", b""
            for line in raw.split(b"\n"):
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
            if not data:
                continue
            if event == "":
                content = orjson.loads(data)["chat_completion"]["message"]["content"]
                tokens.extend((t, int(n)) for n in TOKEN.findall(content))
            elif event == "end":
                ending = orjson.loads(data).get("status", "?")
            elif event == "error":
                ending = "error: " + str(orjson.loads(data).get("code"))
    return tokens, ending


async def run_level(stack: BenchStack, level: int, tokens: int, rate: float, submitters: int, order: str,
                    timeout: float, subscribers: bool = True) -> dict:
    stack.fake.reset()
    name = f"c{level}"
    follows = [Follow(i) for i in range(level)]
    gate = asyncio.Semaphore(submitters)
    pid = None
    host, port = stack.base_url.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": KEY}, timeout=60,
                                 limits=httpx.Limits(max_connections=submitters)) as submit_client:
        if order == "worker-first":
            pid = stack.start_worker(level + 50, name)
            await asyncio.to_thread(stack.wait_ready, name)

        async def one(f: Follow) -> None:
            await submit(submit_client, f, tokens, gate)
            if subscribers:
                await follow(host, int(port), f)

        tasks = [asyncio.create_task(one(f)) for f in follows]
        if order == "jobs-first":
            while sum(1 for f in follows if (f.opened if subscribers else f.job_id) or f.error) < level:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let the API's followers subscribe
            pid = stack.start_worker(level + 50, name)
        # The worker's CPU is counted from the first provider call (not its start-up).
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(stack.fake.stats))["total"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        procs = {"worker": pid, "api": stack.pid("api"), "redis": stack.pid("redis"),
                 "fake": stack.fake.proc.pid, "bench": os.getpid()}
        window = CpuWindow(procs)
        window_started = time.monotonic()
        if not subscribers:  # done when the provider has answered every call (one poll of it)
            while time.monotonic() < deadline:
                stats = await asyncio.to_thread(stack.fake.stats)
                if stats["total"] >= level and stats["active"] == 0:
                    break
                await asyncio.sleep(0.1)
        _, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 1))
        for task in pending:
            task.cancel()
        for f, task in zip(follows, tasks):
            if task in pending:
                f.error = f.error or "timeout"
        cores = window.stop()
        window_seconds = time.monotonic() - window_started
        worker_cpu = cores.get("worker", 0.0) * window_seconds
        api_cpu = cores.get("api", 0.0) * window_seconds
        if not subscribers:  # outside the measured window: how each job ended
            await asyncio.gather(*(job_status(submit_client, f, deadline) for f in follows))
    rss = peak_rss_mib(pid)
    stats = stack.fake.stats()
    calls = stack.fake.requests(family="openai")
    stack.stop_worker(name)

    t0: dict[int, float] = {}
    retries = 0
    for rec in calls:
        text = (rec.get("body") or {}).get("messages", [{}])[-1].get("content", "")
        m = JOB_TEXT.match(text)
        if m:
            i = int(m.group(1))
            if i in t0:
                retries += 1
            else:
                t0[i] = rec["time"]
    received = duplicates = completed = 0
    last_arrival = 0.0
    latencies: list[float] = []
    steady: list[float] = []  # tokens the provider emitted after the last call had started
    ramp_end = max(t0.values(), default=0.0)
    errors: dict[str, int] = {}
    for f in follows:
        if not subscribers:
            completed += f.status == "succeeded"
            if f.error or f.status != "succeeded":
                problem = f.error or f.status or "unfinished"
                errors[problem] = errors.get(problem, 0) + 1
            continue
        dechunk(f)
        toks, ending = parse(f)
        seen = {n for _, n in toks}
        received += len(seen)
        duplicates += len(toks) - len(seen)
        if ending == "succeeded":
            completed += 1
        problem = f.error or ("" if ending == "succeeded" else (ending or "stream ended without end event"))
        if problem:
            errors[problem] = errors.get(problem, 0) + 1
        if toks:
            last_arrival = max(last_arrival, toks[-1][0])
        if f.index in t0:
            for t, n in toks:
                emitted = t0[f.index] + n / rate
                latencies.append(t - emitted)
                if emitted >= ramp_end:
                    steady.append(t - emitted)
    if not subscribers:  # every succeeded job relayed all its tokens; nobody timed them
        received = completed * tokens
        last_arrival = min(t0.values(), default=0.0) + window_seconds
    details = [f.detail for f in follows if f.detail][:5]
    return {"level": level, "details": details, "completed": completed, "received": received,
            "expected": level * tokens,
            "duplicates": duplicates, "latencies": latencies, "steady": steady, "rss": rss, "errors": errors,
            "peak": stats.get("peak_active", 0), "calls": len(calls), "retries": retries,
            "span": last_arrival - min(t0.values(), default=last_arrival),
            "ramp": max(t0.values(), default=0.0) - min(t0.values(), default=0.0), "cores": cores,
            "worker_cpu": worker_cpu, "api_cpu": api_cpu, "subscribers": subscribers, "window": window_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--tokens", type=int, default=100, help="tokens per call")
    parser.add_argument("--rate", type=float, default=20.0, help="provider tokens per second per call")
    parser.add_argument("--submitters", type=int, default=50, help="concurrent POST /v4/jobs")
    parser.add_argument("--order", choices=("jobs-first", "worker-first"), default="jobs-first")
    parser.add_argument("--timeout", type=float, default=180.0, help="per level, seconds")
    parser.add_argument("--no-subscribers", action="store_true",
                        help="open no streams: the worker's own cost, without the API relaying every token "
                             "(the jobs are polled until they end)")
    args = parser.parse_args()
    nofile = raise_open_files(max(65536, 4 * max(args.levels)))

    stack = BenchStack(fake_knobs={"ttft_ms": 0, "tokens_per_s": args.rate, "tokens": args.tokens,
                                   "record_limit": 2 * max(args.levels) + 100})
    results = []
    try:
        stack.start_api()
        # a worker just to see the API ready, stopped before the first level
        stack.start_worker(50, "warmup")
        stack.wait_ready("warmup")
        stack.stop_worker("warmup")
        for level in args.levels:
            results.append(run_async(run_level(stack, level, args.tokens, args.rate, args.submitters, args.order,
                                            args.timeout, subscribers=not args.no_subscribers)))
            r = results[-1]
            print(f"level {level}: {r['completed']} completed, last token {r['span']:.1f} s after the first call",
                  flush=True)
    finally:
        stack.close()

    print(f"\nConcurrent streaming calls in one worker process: {args.tokens} tokens per call at "
          f"{args.rate:g} tokens/s ({args.tokens / args.rate:g} s per call), "
          + ("no subscribers" if args.no_subscribers else "one API process relaying every stream")
          + f", order {args.order}, open files {nofile}, {os.cpu_count()} cores")
    rows = []
    for r in results:
        lost = r["expected"] - r["received"]
        errors = sum(r["errors"].values())
        timed = r["subscribers"]  # without subscribers nothing was received or timed
        rows.append([
            str(r["level"]), str(r["peak"]), f"{r['completed']}/{r['level']}",
            f"{r['received']}/{r['expected']}" if timed else "-", str(lost) if timed else "-",
            str(r["duplicates"]) if timed else "-",
            *((f"{percentile(r['latencies'], 50) * 1000:.0f}", f"{percentile(r['latencies'], 99) * 1000:.0f}",
               f"{percentile(r['steady'], 50) * 1000:.1f}", f"{percentile(r['steady'], 99) * 1000:.1f}")
              if timed else ("-",) * 4),
            f"{r['ramp']:.1f}", f"{r['span']:.1f}", f"{r['received'] / r['span']:.0f}" if r["span"] > 0 else "",
            f"{r['cores']['worker']:.2f}",
            f"{r['worker_cpu'] / r['received'] * 1000:.3f}" if r["received"] else "",
            f"{r['api_cpu'] / r['received'] * 1000:.3f}" if r["received"] and timed else "-",
            f"{r['rss']:.0f}",
            str(errors) + (f" {r['errors']}" if errors else ""),
        ])
    print(table(["jobs", "peak calls", "completed", "tokens received", "lost", "dup", "relay p50 ms",
                 "relay p99 ms", "after ramp p50 ms", "after ramp p99 ms", "calls started over s", "span s",
                 "tokens/s", "worker cores", "worker CPU ms/token", "API relay CPU ms/token", "worker peak RSS MiB",
                 "errors"], rows))
    print("\nCores busy per process, from the first provider call until every stream ended "
          "(\"others\": processes outside the benchmark):")
    names = list(results[0]["cores"]) if results else []
    ours = [k for k in names if k not in ("machine", "others")]
    print(table(["jobs", *names, "benchmark's processes"],
                [[str(r["level"]), *(f"{r['cores'][k]:.2f}" for k in names),
                  f"{sum(r['cores'][k] for k in ours):.2f}"] for r in results]))
    for r in results:
        for detail in r["details"]:
            print(f"broken stream at {r['level']}: {detail}")
    if any(r["retries"] for r in results):
        print("provider calls retried: " + ", ".join(f"{r['level']}: {r['retries']}" for r in results))


if __name__ == "__main__":
    main()
