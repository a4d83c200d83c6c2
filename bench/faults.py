"""The fault suite: the real stack, a fake upstream, and every fault a deployment meets, as figures.

    .venv/bin/python -m bench.faults [--quick] [--kills 100] [--only kills,redis,upstream,batch,schema]
                                     [--state-redis] [--rabbitmq]

On its own fleet (Redis with the shipped ``deploy/redis.conf``, the API, two provider workers, the
fake provider), one scenario after the other:

- **kills**: jobs (half streamed, each followed by an SSE subscriber) while a worker is killed
  with SIGKILL every ``--kill-every`` seconds and started again, ``--kills`` times;
- **redis**: Redis killed (SIGKILL) while jobs are queued and running, down for 2 s (and 20 s),
  then started again with ``deploy/redis.conf``;
- **upstream**: 20 % (and 50 %) of provider calls fail: 429 with Retry-After, 500, 503, a hang
  past the first-token timeout, a stream cut mid-way;
- **batch**: a 10,000-line batch (1,000 with ``--quick``) while interactive jobs run, with the
  API's and the workers' peak memory;
- **schema**: schemathesis against the OpenAPI document, account and admin routes (run from an
  environment of its own, which this command builds under ``var/bench-env``).

For every job it checks, from outside: lost (its record gone), stuck (not ended after the faults
stopped), streamed text duplicated or out of order (the events' ids and text against the fake's
deterministic answer), usage counted twice (the ledger's requests and tokens against the jobs'
own). Each must be 0; a job may still end ``failed`` with a clear code (``redelivery_limit``
after three lost workers, an upstream fault after four calls). Exits 1 on any loss; the last line
is the figures. ``--quick`` runs it all in under five minutes. ``--state-redis`` runs the fleet
with its state store in a Redis of its own, the first one only Celery's broker; the redis
scenario then kills and restarts both, together. ``--rabbitmq`` runs it with RabbitMQ as Celery's
broker (a node of its own) and Redis the state store only, and adds the rabbitmq scenario:
RabbitMQ SIGKILLed while jobs are queued and running, and started again on its data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import orjson

from bench._stack import KEY, BenchStack, bench_tool, peak_rss_mib, run_async, table
from deploy.devstack import ROOT, redis_server_binary, start_rabbitmq
from shared.connections import redis_answers

MODEL = "gpt-4o-mini"
TERMINAL = ("succeeded", "failed", "cancelled")
ADMIN = "cf-bench-admin"


def expected_text(n: int) -> str:
    return " ".join(f"tok{i}" for i in range(n))


@dataclass
class Tally:
    scenario: str
    jobs: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    stuck: int = 0
    duplicated: int = 0
    usage_twice: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def losses(self) -> int:
        return self.lost + self.stuck + self.duplicated + self.usage_twice

    def row(self) -> list[str]:
        failed = ", ".join(f"{n} {code}" for code, n in sorted(self.failed.items())) or "0"
        return [self.scenario, str(self.jobs), str(self.succeeded), failed, str(self.lost), str(self.stuck),
                str(self.duplicated), str(self.usage_twice), "; ".join(self.notes)]


# --- the stack ------------------------------------------------------------------------------------


STATE_REDIS = False  # --state-redis
RABBITMQ = False  # --rabbitmq


def fleet(extra: dict[str, str] | None = None) -> BenchStack:
    env = {"CHATFLEET_LEASE_SECONDS": "3", "CHATFLEET_WORKER_HEARTBEAT_SECONDS": "1",
           "CHATFLEET_ADMIN_API_KEY": ADMIN, "CHATFLEET_PROVIDER_FIRST_TOKEN_TIMEOUT": "2",
           "CHATFLEET_PROVIDER_IDLE_TIMEOUT": "2", "CHATFLEET_SHUTDOWN_GRACE_SECONDS": "2",
           "CHATFLEET_WORKER_METRICS_PORT": "0", **(extra or {})}
    stack = BenchStack(fake_knobs={"ttft_ms": 20, "tokens_per_s": 20, "tokens": 10_000, "record_limit": 0},
                       extra_env=env, state_redis=STATE_REDIS, rabbitmq=RABBITMQ)
    restart_redis_with_shipped_conf(stack)
    stack.start_api()
    for name in ("w1", "w2"):
        stack.start_worker(100, name=name)
    stack.wait_ready("w1")
    stack.wait_ready("w2")
    return stack


def restart_redis_with_shipped_conf(stack: BenchStack, down: float = 0.0) -> None:
    """Kill Redis (SIGKILL; with the state store apart, both) and start it again from
    ``deploy/redis.conf`` on the same port and data directory, after ``down`` seconds."""
    servers = [("redis", stack.redis_url)]
    if stack.state_url != stack.redis_url:
        servers.append(("state-redis", stack.state_url))
    for name, _ in servers:
        stack.fleet.kill(name)
    time.sleep(down)
    # The shipped file as it is, but for where it keeps its data and listens (its /data is a volume's).
    shipped = (ROOT / "deploy" / "redis.conf").read_text().splitlines()
    for name, url in servers:
        port = url.rsplit(":", 1)[1].split("/")[0]
        conf = stack.tmp / f"{name}.conf"
        conf.write_text("\n".join(line for line in shipped if not line.startswith(("dir ", "bind ", "protected-mode ")))
                        + f"\ndir {stack.tmp / name}\nbind 127.0.0.1\nprotected-mode yes\nport {port}\n")
        stack.fleet.spawn(name, [redis_server_binary(), str(conf)], dict(os.environ), stack.log_dir)
    deadline = time.monotonic() + 30
    while not all(redis_answers(url) for _, url in servers):
        if time.monotonic() > deadline:
            raise RuntimeError("Redis did not come back")
        time.sleep(0.05)


# --- jobs, followed from outside ------------------------------------------------------------------


@dataclass
class Job:
    id: str
    tokens: int
    stream: bool
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (id, event, data)
    record: dict | None = None


async def follow(client: httpx.AsyncClient, job: Job, deadline: float) -> None:
    """The job's SSE stream to its end, reconnecting with Last-Event-ID when it breaks."""
    last = 0
    while time.monotonic() < deadline:
        try:
            headers = {"Last-Event-ID": str(last)} if last else {}
            async with client.stream("GET", f"/v4/jobs/{job.id}/stream", headers=headers, timeout=30) as r:
                if r.status_code == 204:
                    return
                event, data, event_id = None, [], None
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line.startswith("id:"):
                        event_id = int(line[3:].strip())
                    elif line == "" and data:
                        if event_id is not None:
                            job.events.append((event_id, event or "message", "\n".join(data)))
                            last = event_id
                        if event in ("end", "error"):
                            return
                        event, data, event_id = None, [], None
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(0.2)


async def submit(client: httpx.AsyncClient, tokens: int, stream: bool) -> Job | None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "say tokens"}],
            "model_parameters": {"max_tokens": tokens}}
    for _ in range(50):  # a 503 while Redis is away is not an accepted job: the client tries again
        try:
            r = await client.post("/v4/jobs", json=body)
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
            continue
        if r.status_code == 202:
            return Job(r.json()["id"], tokens, stream)
        await asyncio.sleep(0.2)
    return None


async def settle(client: httpx.AsyncClient, jobs: list[Job], timeout: float) -> None:
    """Every job's record, once ended or at the deadline."""
    deadline = time.monotonic() + timeout
    pending = list(jobs)
    while pending and time.monotonic() < deadline:
        still = []
        for job in pending:
            try:
                r = await client.get(f"/v4/jobs/{job.id}")
            except httpx.HTTPError:
                still.append(job)
                continue
            job.record = r.json() if r.status_code == 200 else {"status": "missing"}
            if job.record["status"] not in TERMINAL and job.record["status"] != "missing":
                still.append(job)
        pending = still
        if pending:
            await asyncio.sleep(0.5)


def check(tally: Tally, jobs: list[Job], usage: dict) -> Tally:
    completion = 0
    for job in jobs:
        record = job.record or {"status": "missing"}
        status = record["status"]
        if status == "missing":
            tally.lost += 1
            continue
        if status not in TERMINAL:
            tally.stuck += 1
            continue
        if status == "succeeded":
            tally.succeeded += 1
            text = record["result"]["chat_completion"]["message"]["content"]
            if text != expected_text(job.tokens):
                tally.duplicated += 1
        else:
            code = (record.get("error") or {}).get("code", status)
            tally.failed[code] = tally.failed.get(code, 0) + 1
        completion += (record.get("usage") or {}).get("completion_tokens", 0)
        if job.stream:
            ids = [e[0] for e in job.events]
            streamed = "".join(orjson.loads(d)["chat_completion"]["message"]["content"]
                               for _, event, d in job.events if event == "message")
            if ids != list(range(1, len(ids) + 1)) or not expected_text(job.tokens).startswith(streamed) \
                    or (status == "succeeded" and streamed != expected_text(job.tokens)):
                tally.duplicated += 1
    tally.jobs = len(jobs)
    if usage.get("requests", 0) != len(jobs) or usage.get("completion_tokens", 0) != completion:
        tally.usage_twice += 1
        tally.notes.append(f"ledger {usage.get('requests')} requests / {usage.get('completion_tokens')} tokens, "
                           f"jobs {len(jobs)} / {completion}")
    return tally


async def ledger(client: httpx.AsyncClient) -> dict:
    rows = (await client.get("/v4/usage", params={"group_by": "model"})).json()["data"]
    return next((r for r in rows if r["model"] == MODEL), {})


async def run_jobs(stack: BenchStack, n: int, chaos, scenario: str, tokens: int = 30, timeout: float = 180) -> Tally:
    """``n`` jobs (every other one streamed and followed) submitted while ``chaos()`` runs."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": KEY}, timeout=30) as client:
        jobs: list[Job] = []
        followers = []
        deadline = time.monotonic() + timeout
        chaos_task = asyncio.create_task(chaos())
        i = 0
        while i < n or not chaos_task.done():  # at least n jobs, and jobs for as long as the faults go on
            job = await submit(client, tokens, stream=i % 2 == 0)
            i += 1
            if job is None:
                continue
            jobs.append(job)
            if job.stream:
                followers.append(asyncio.create_task(follow(client, job, deadline)))
            await asyncio.sleep(random.uniform(0.05, 0.15))
        notes = await chaos_task
        await asyncio.gather(*followers)
        await settle(client, jobs, max(deadline - time.monotonic(), 30))
        tally = check(Tally(scenario), jobs, await ledger(client))
        resumed = sum(1 for j in jobs if (j.record or {}).get("attempts", 0) > 1)
        tally.notes[:0] = [*(notes or []), f"{resumed} jobs resumed by another attempt"]
        return tally


# --- scenarios ------------------------------------------------------------------------------------


def kills(kills: int, every: float, jobs: int) -> Tally:
    stack = fleet()
    try:
        async def chaos():
            done = 0
            while done < kills:
                await asyncio.sleep(every * random.uniform(0.7, 1.3))
                name = random.choice(["w1", "w2"])
                stack.fleet.kill(f"worker-{name}")
                stack.start_worker(100, name=name)
                done += 1
            return [f"{done} SIGKILLs"]

        return run_async(run_jobs(stack, jobs, chaos, "worker SIGKILLs", timeout=kills * every + 180))
    finally:
        stack.close()


def redis_restart(down: float, jobs: int) -> Tally:
    stack = fleet()
    try:
        async def chaos():
            await asyncio.sleep(3)  # jobs queued and running
            await asyncio.to_thread(restart_redis_with_shipped_conf, stack, down)
            return [f"Redis down {down:g} s"]

        return run_async(run_jobs(stack, jobs, chaos, f"Redis SIGKILL, {down:g} s down", timeout=240))
    finally:
        stack.close()


def restart_rabbitmq(stack: BenchStack, down: float) -> None:
    """SIGKILL RabbitMQ and start it again on the same port and data, after ``down`` seconds."""
    port = int(stack.broker_url.rsplit(":", 1)[1].split("/")[0])
    stack.fleet.kill("rabbitmq")
    time.sleep(down)
    start_rabbitmq(stack.fleet, port, stack.tmp / "rabbitmq", stack.log_dir)


def broker_restart(down: float, jobs: int) -> Tally:
    stack = fleet()
    try:
        async def chaos():
            await asyncio.sleep(3)  # jobs queued and running
            await asyncio.to_thread(restart_rabbitmq, stack, down)
            return [f"RabbitMQ down {down:g} s"]

        return run_async(run_jobs(stack, jobs, chaos, f"RabbitMQ SIGKILL, {down:g} s down", timeout=240))
    finally:
        stack.close()


def upstream(rate: float, jobs: int) -> Tally:
    stack = fleet()
    try:
        faults = [{"status": 429, "retry_after": 0.2}, {"status": 500}, {"status": 503}, {"hang": True},
                  {"cut_after": 5}]
        script = [random.choice(faults) if random.random() < rate else {"tokens_per_s": 20} for _ in range(jobs * 6)]
        stack.fake.script(script)

        async def chaos():
            return [f"{rate:.0%} of calls fail"]

        return run_async(run_jobs(stack, jobs, chaos, f"upstream faults {rate:.0%}", timeout=300))
    finally:
        stack.close()


def batch(lines: int, interactive: int) -> Tally:
    stack = fleet({"CHATFLEET_BATCH_MAX_IN_FLIGHT": "100"})
    tally = Tally(f"{lines}-line batch + interactive jobs")
    try:
        stack.fake.config(tokens_per_s=0)
        body = b"".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v4/chat-completions",
                                      "body": {"model": MODEL, "messages": [{"content": f"q{i}"}],
                                               "model_parameters": {"max_tokens": 3}}}) + b"\n"
                        for i in range(lines))

        async def go():
            async with httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": KEY}, timeout=120) as client:
                r = await client.post("/v4/batches", files={"file": ("b.jsonl", body, "application/jsonl")})
                batch_id = r.json()["id"]
                jobs: list[Job] = []
                over = asyncio.Event()

                async def interactive_load():  # alongside the batch, for as long as it runs
                    while not over.is_set() or len(jobs) < interactive:
                        job = await submit(client, 5, False)
                        if job:
                            jobs.append(job)
                        await asyncio.sleep(0.1)

                load = asyncio.create_task(interactive_load())
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    b = (await client.get(f"/v4/batches/{batch_id}")).json()
                    if b["status"] in ("completed", "failed", "expired", "cancelled"):
                        break
                    await asyncio.sleep(0.5)
                over.set()
                await load
                results = (await client.get(f"/v4/batches/{batch_id}/results")).text.splitlines()
                errors = (await client.get(f"/v4/batches/{batch_id}/errors")).text.splitlines()
                await settle(client, jobs, 120)
                return b, results, errors, jobs

        started = time.monotonic()
        b, results, errors, jobs = run_async(go())
        took = time.monotonic() - started
        counts = b["request_counts"]
        ids = [orjson.loads(line)["custom_id"] for line in results + errors]
        tally.jobs = lines + len(jobs)
        tally.succeeded = counts["completed"] + sum(1 for j in jobs if (j.record or {}).get("status") == "succeeded")
        if counts["failed"]:
            tally.failed["batch line"] = counts["failed"]
        tally.lost = lines - len(set(ids))
        tally.duplicated = len(ids) - len(set(ids))
        tally.stuck = sum(1 for j in jobs if (j.record or {}).get("status") not in TERMINAL)
        if b["status"] != "completed" or counts["total"] != lines or counts["completed"] + counts["failed"] != lines:
            tally.stuck += 1
        tally.notes.append(f"{b['status']} in {took:.0f} s; peak RSS API {peak_rss_mib(stack.pid('api')):.0f} MiB, "
                           f"workers {peak_rss_mib(stack.pid('worker-w1')):.0f}/"
                           f"{peak_rss_mib(stack.pid('worker-w2')):.0f} MiB")
        return tally
    finally:
        stack.close()


def schema(examples: int) -> Tally:
    tally = Tally("schemathesis")
    exe = bench_tool("schemathesis", "schemathesis>=4,<5")
    stack = fleet()
    try:
        cases = 0
        errors = 0
        for name, key, include in (("account routes", KEY, "--exclude-path-regex=^/v4/admin"),
                                   ("admin routes", ADMIN, "--include-path-regex=^/v4/admin")):
            out = subprocess.run(
                [str(exe), "run", f"{stack.base_url}/openapi.json", "--checks", "not_a_server_error",
                 "--max-examples", str(examples), "-H", f"x-api-key: {key}", include, "--no-color",
                 "--workers", "2", "--request-timeout", "30"],
                capture_output=True, text=True, timeout=1800)
            text = out.stdout + out.stderr
            found = [int(n) for n in re.findall(r"(\d+) generated", text)]
            cases += found[-1] if found else 0
            failed = re.findall(r"(\d+) failed", text)
            server_errors = int(failed[-1]) if failed else 0
            if out.returncode not in (0, 1) and not found:
                raise RuntimeError(f"schemathesis did not run: {text[-500:]}")
            errors += server_errors
            if server_errors:
                tally.notes.append(f"{name}: {server_errors} server errors")
            (stack.tmp / f"schemathesis-{name.split()[0]}.log").write_text(text)
        tally.jobs = cases
        tally.succeeded = cases - errors
        tally.stuck = errors  # a server error is a loss of this suite
        tally.notes.append(f"{cases} cases; logs in {stack.tmp}")
        return tally
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under five minutes")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs of workers (default 100; quick 15)")
    parser.add_argument("--kill-every", type=float, default=1.5, help="seconds between kills")
    parser.add_argument("--only", default="kills,redis,upstream,batch,schema")
    parser.add_argument("--state-redis", action="store_true",
                        help="the state store in a Redis of its own, the first one only the broker")
    parser.add_argument("--rabbitmq", action="store_true",
                        help="RabbitMQ as Celery's broker (its own node), Redis the state store; adds the "
                             "scenario 'rabbitmq' (RabbitMQ SIGKILLed and restarted)")
    args = parser.parse_args()
    global STATE_REDIS, RABBITMQ
    STATE_REDIS, RABBITMQ = args.state_redis, args.rabbitmq
    quick = args.quick
    kill_count = args.kills or (15 if quick else 100)
    only = set(args.only.split(","))
    random.seed(7)
    tallies: list[Tally] = []
    if "kills" in only:
        tallies.append(kills(kill_count, args.kill_every, max(kill_count * 2, 40)))
    if "redis" in only:
        for down in ((2,) if quick else (2, 20)):
            tallies.append(redis_restart(down, 40 if quick else 80))
    if RABBITMQ and ("rabbitmq" in only or args.only == parser.get_default("only")):
        for down in ((2,) if quick else (2, 20)):
            tallies.append(broker_restart(down, 40 if quick else 80))
    if "upstream" in only:
        for rate in ((0.2,) if quick else (0.2, 0.5)):
            tallies.append(upstream(rate, 40 if quick else 100))
    if "batch" in only:
        tallies.append(batch(1000 if quick else 10_000, 20 if quick else 100))
    if "schema" in only:
        tallies.append(schema(30 if quick else 200))

    print(table(["scenario", "jobs", "succeeded", "failed (clear)", "lost", "stuck", "duplicated", "usage twice",
                 "notes"], [t.row() for t in tallies], left_first=True))
    losses = sum(t.losses for t in tallies)
    summary = "; ".join(f"{t.scenario}: {t.jobs} jobs, {t.succeeded} ok, {sum(t.failed.values())} failed, "
                        f"{t.losses} lost/stuck/dup/usage" for t in tallies)
    print(f"faults: {'OK' if losses == 0 else 'LOSSES'} ({losses}) | {summary}")
    sys.exit(1 if losses else 0)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
