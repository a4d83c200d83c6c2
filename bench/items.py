"""What each piece of the fleet's own work costs per request, item by item, on a real Redis.

    .venv/bin/python -m bench.items [--requests 3000] [--callers 50]

A stateless gateway (bench.peers' Portkey) answers an HTTP request by making one to the
provider. The fleet makes the same two HTTP exchanges, and beside them keeps the request as a
durable job, admits it under its account's limits, keeps its events for any later or
reconnecting reader, and writes its usage. This benchmark makes each of those steps as the
fleet makes it (the same ``JobStore``, ``Limiter`` and API stream code, their scripts through a
script channel as the API's and the worker's go), ``--requests`` times from ``--callers`` concurrent asyncio
callers on a fresh Redis, one step after the other, and prints per request: the client's CPU
(this process: the Python side of the step), Redis's CPU, and the round trips.

Steps, in a request's order (gpt-4o-mini, 8 tokens, an account with rpm, tpm and concurrency
limits, fair share on, as bench.peers' and bench.throughput's requests run):

- durable job, submitted (API): fair share's place, the record with its staged message, the push;
- durable job, claimed (worker): the claim under a lease, the record and past events read back;
- limits, admitted (worker): every limit checked and held, in one script; the call counted;
- resumable stream, 8 tokens published (worker): appended to the job's event stream and
  published, in one script (the tokens of a zero-latency answer come together);
- job ended with its usage (worker): the result, the terminal event and the usage ledger,
  atomically, in one script;
- limits, settled (worker): the real token count, the slots given back;
- resumable stream, read by the API: subscribed, the events read back from the stream (the
  synchronous routes and every follower do this), unsubscribed.

What the table leaves out, measured by other benchmarks: Celery's delivery, trace and ack of the
job's message (``bench.throughput``'s bare ping, worker and Redis CPU), and the HTTP exchanges
themselves, which a stateless gateway makes too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import orjson

from api.streams import PubSubHub, follow
from bench._stack import cpu_seconds, fresh_redis, run_async, table
from bench.limiter import commandstats
from shared import keys
from shared.connections import async_redis
from shared.events import END, TOKEN
from shared.jobs import JobStore
from shared.jobspec import JobSpec, Sampling, Turn
from shared.results import stream_chunk
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings
from shared.usage import UsageRecord
from worker.limits import Limiter

MODEL = "gpt-4o-mini"
ACCOUNT = "bench-items"
TOKENS = 8
PROMPT = "Say eight words about lighthouses."
SPEC = JobSpec(model=MODEL, messages=(Turn("user", PROMPT),), params=Sampling(temperature=1.0, max_tokens=TOKENS),
               prompt_bytes=len(PROMPT))


async def commands(redis) -> tuple[int, int]:
    """(round trips, commands) Redis has served so far: its script calls, and every command
    inside scripts too (``bench.limiter.commandstats``); the INFO call itself counted out by the
    caller."""
    calls = {name: stats["calls"] for name, stats in (await commandstats(redis)).items()}
    scripted = sum(v for k, v in calls.items() if k not in ("evalsha", "eval", "info"))
    trips = sum(v for k, v in calls.items() if k in ("evalsha", "eval"))
    return trips, scripted


async def drive(ids: list[str], callers: int, step) -> float:
    counter = iter(ids)

    async def caller() -> None:
        for job_id in counter:
            await step(job_id)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - start


async def measure(redis_url: str, redis_pid: int, n: int, callers: int) -> list[dict]:
    settings = Settings(redis_url=redis_url)
    redis = async_redis(redis_url, max_connections=callers + 10)
    channel = ScriptChannel(redis_url)
    # The API's store and the worker's alike: scripts (and the push) through a script channel,
    # other reads through redis-py (api/main.py, worker/runtime.py).
    store = JobStore(redis, settings, channel)
    limiter = Limiter(redis, settings, channel)
    hub = PubSubHub(redis)
    await hub.start()
    await redis.hset(keys.account(ACCOUNT), mapping={
        "id": ACCOUNT, "name": ACCOUNT, "rpm": 10**9, "tpm": 10**12, "max_concurrency": 10**6})
    chunks = [orjson.dumps(stream_chunk(f"word{i} ")).decode() for i in range(TOKENS)]
    end = orjson.dumps({"status": "succeeded"}).decode()
    usage = UsageRecord(MODEL, 12, TOKENS, 9_900, 3, time.strftime("%Y-%m-%d", time.gmtime()))
    tokens: dict[str, str] = {}

    async def submit(job_id: str) -> None:
        await store.create(account_id=ACCOUNT, model=MODEL, queue=keys.QUEUE_INTERACTIVE, spec=SPEC,
                               job_id=job_id)

    async def claim(job_id: str) -> None:
        token = tokens[job_id] = f"t-{job_id}"
        claimed = await store.claim(job_id, token)
        if claimed.outcome != "claimed":
            raise RuntimeError(f"{job_id} not claimed: {claimed.outcome}")

    async def admit(job_id: str) -> None:
        admission = await limiter.admit(job_id=job_id, account_id=ACCOUNT, model=MODEL, deployment="openai",
                                        deployment_rpm=None, deployment_tpm=None, tokens=TOKENS + 12,
                                        submitted_at=time.time(), queue=keys.QUEUE_INTERACTIVE)
        if admission.outcome != "admitted":
            raise RuntimeError(f"{job_id} not admitted: {admission.outcome}")

    async def publish(job_id: str) -> None:
        await store.publish(job_id, tokens[job_id], [(i + 1, TOKEN, chunk) for i, chunk in enumerate(chunks)])

    async def finish(job_id: str) -> None:
        fields = {"result": orjson.dumps({"text": "".join(chunks)}).decode()}
        if not await store.finish(job_id, tokens[job_id], "succeeded", fields, [(TOKENS + 1, END, end)],
                                  ACCOUNT, usage):
            raise RuntimeError(f"{job_id} not finished")

    async def settle(job_id: str) -> None:
        await limiter.settle(job_id=job_id, account_id=ACCOUNT, model=MODEL, deployment="openai",
                             tokens=TOKENS + 12, deployment_holds=False, cost_nanousd=9_900)

    async def read(job_id: str) -> None:
        seen = [event async for event in follow(redis, hub, job_id) if event is not None]
        if len(seen) != TOKENS + 1:
            raise RuntimeError(f"{job_id}: {len(seen)} events read back, not {TOKENS + 1}")

    steps = [
        ("durable job, submitted (API)", submit),
        ("durable job, claimed (worker)", claim),
        ("limits, admitted (worker)", admit),
        (f"resumable stream, {TOKENS} tokens published (worker)", publish),
        ("job ended with its usage (worker)", finish),
        ("limits, settled (worker)", settle),
        ("resumable stream, read by the API", read),
    ]
    # A first set of jobs through every step warms the scripts, the connections and the caches.
    for ids in ([f"job_warm{i:06d}" for i in range(max(n // 10, callers))], None):
        measured = ids is None
        ids = ids or [f"job_{i:06d}{os.getpid():x}" for i in range(n)]
        results = []
        for name, step in steps:
            trips0, commands0 = await commands(redis)
            cpu0, redis0 = time.process_time(), cpu_seconds(redis_pid)
            wall = await drive(ids, callers, step)
            cpu, redis_cpu = time.process_time() - cpu0, cpu_seconds(redis_pid) - redis0
            trips1, commands1 = await commands(redis)
            results.append({"name": name, "n": len(ids), "wall": wall, "cpu": cpu, "redis": redis_cpu,
                            "trips": trips1 - trips0, "commands": commands1 - commands0 - 1})
        if measured:
            break
    await hub.close()
    await channel.close()
    await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=50)
    args = parser.parse_args()
    with fresh_redis() as (redis_url, redis_pid):
        results = run_async(measure(redis_url, redis_pid, args.requests, args.callers))
    print(f"\nThe fleet's own work per request, step by step: {args.requests} requests, {args.callers} "
          f"concurrent callers, fresh Redis, {os.cpu_count()} cores")
    rows = []
    for r in results:
        n = r["n"]
        rows.append([r["name"], f"{r['cpu'] / n * 1000:.3f}", f"{r['redis'] / n * 1000:.3f}",
                     f"{(r['cpu'] + r['redis']) / n * 1000:.3f}", f"{r['trips'] / n:.1f}",
                     f"{r['commands'] / n:.1f}", f"{n / r['wall']:.0f}"])
    total = {k: sum(r[k] for r in results) / results[0]["n"] for k in ("cpu", "redis", "trips", "commands")}
    rows.append(["all of it", f"{total['cpu'] * 1000:.3f}", f"{total['redis'] * 1000:.3f}",
                 f"{(total['cpu'] + total['redis']) * 1000:.3f}", f"{total['trips']:.1f}",
                 f"{total['commands']:.1f}", ""])
    print(table(["step", "client CPU ms", "Redis CPU ms", "together ms", "scripts (round trips)",
                 "commands in Redis", "steps/s"], rows, left_first=True))


if __name__ == "__main__":
    main()
