"""Admissions per second and Redis round trips per admission of the rate limiter.

    .venv/bin/python -m bench.limiter [--admissions 20000] [--callers 50]

Calls ``worker.limits.Limiter.admit`` directly (no API, no worker) from 50 concurrent asyncio
callers, distinct job ids, on a fresh Redis (started here), with one async Redis client as the
fleet makes them (``shared.connections.async_redis``):

- admitted: an account with limits so high that every call admits (all three scopes run:
  account, account x model, deployment with rpm/tpm);
- rejected, head retried: an account with ``max_concurrency`` 1 whose slot a first job holds;
  the job at the head of its waiting line asked again and again (what the throttle scheduler
  does), so every call evaluates every limit;
- rejected, queued: the same account, distinct jobs, each waiting behind that head (the
  account's admission order);
- admitted, with a budget, key limits and fair share: an account with limits as high and a
  budget, through an API key with its own rpm, tpm, concurrency and budget, its job taken off
  its queue's fair share (every check admission makes, in the same one script).

Baselines on the same client and callers: ``PING``, and ``EVALSHA`` of a script that returns 1.
Round trips come from Redis's own ``INFO commandstats`` (deltas over the run): EVALSHA/EVAL calls
per admission are the round trips the client made; all commands per admission also counts the
commands the script ran inside Redis; Redis µs per admission is the server time of the EVALSHAs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench._stack import cpu_seconds, fresh_redis, run_async, table
from shared import keys
from shared.connections import async_redis
from shared.settings import Settings
from worker.limits import Limiter

HIGH = 10**12
MODEL = "gpt-4o-mini"
DEPLOYMENT = "openai"


async def commandstats(redis) -> dict[str, dict[str, float]]:
    raw = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): v for k, v in raw.items() if isinstance(v, dict)}


async def drive(n: int, callers: int, call) -> tuple[float, list[str]]:
    """``n`` calls of ``call(i)`` from ``callers`` concurrent tasks; wall seconds and outcomes."""
    counter = iter(range(n))
    outcomes: list[str] = []

    async def caller() -> None:
        for i in counter:
            outcomes.append(await call(i))

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - start, outcomes


async def measure(redis_url: str, redis_pid: int, n: int, callers: int) -> list[dict]:
    redis = async_redis(redis_url, max_connections=callers + 10)
    settings = Settings(redis_url=redis_url, lease_seconds=3600)  # the holder keeps its slot throughout
    limiter = Limiter(redis, settings)
    await redis.hset(keys.account("bench-open"), mapping={
        "id": "bench-open", "name": "bench-open", "rpm": HIGH, "tpm": HIGH, "max_concurrency": HIGH})
    await redis.hset(keys.account("bench-closed"), mapping={
        "id": "bench-closed", "name": "bench-closed", "max_concurrency": 1})
    trivial = redis.register_script("return 1")
    submitted = time.time()

    await redis.hset(keys.account("bench-budget"), mapping={
        "id": "bench-budget", "name": "bench-budget", "rpm": HIGH, "tpm": HIGH, "max_concurrency": HIGH,
        "budget_nanousd": HIGH * 10**3, "budget_period": "month"})
    await redis.hset(keys.key_limits("bench-budget", "key_bench"), mapping={
        "rpm": HIGH, "tpm": HIGH, "max_concurrency": HIGH, "budget_nanousd": HIGH * 10**3, "budget_period": "day"})

    def admit(account: str, job: str, **scoped):
        return limiter.admit(job_id=job, account_id=account, model=MODEL, deployment=DEPLOYMENT,
                             deployment_rpm=HIGH, deployment_tpm=HIGH, tokens=200, submitted_at=submitted,
                             **scoped)

    if (await admit("bench-closed", "holder")).outcome != "admitted":
        raise RuntimeError("the closed account's first job was not admitted: the setup is wrong")

    def ping(run: str):
        async def call(i: int) -> str:
            await redis.ping()
            return "pong"
        return call

    def evalsha(run: str):
        async def call(i: int) -> str:
            return str(await trivial())
        return call

    def admitted(run: str):
        async def call(i: int) -> str:
            return (await admit("bench-open", f"{run}-{i}")).outcome
        return call

    def budgeted(run: str):
        async def call(i: int) -> str:
            return (await admit("bench-budget", f"{run}-{i}", key_id="key_bench", cost_nanousd=3000,
                                queue=keys.QUEUE_INTERACTIVE)).outcome
        return call

    def queued(run: str):
        async def call(i: int) -> str:
            return (await admit("bench-closed", f"{run}-{i}")).outcome
        return call

    def head_retried(run: str):
        async def call(i: int) -> str:
            return (await admit("bench-closed", "head")).outcome
        return call

    runs = [
        ("baseline: PING", ping),
        ("baseline: EVALSHA return 1", evalsha),
        ("admit: admitted", admitted),
        ("admit: admitted, budgets + key limits + fair share", budgeted),
        ("admit: rejected, head of the line retried", head_retried),
        ("admit: rejected, queued behind the head", queued),
    ]
    results = []
    for name, make in runs:
        if make is head_retried:  # the line holds only this job
            await redis.delete(keys.account_waiting("bench-closed"))
        # warm-up: connections opened, script loaded (EVALSHA, NOSCRIPT, SCRIPT LOAD)
        await drive(max(n // 10, callers), callers, make("warm"))
        before = await commandstats(redis)
        cpu0 = cpu_seconds(redis_pid)
        wall, outcomes = await drive(n, callers, make("run"))
        redis_cpu = cpu_seconds(redis_pid) - cpu0
        after = await commandstats(redis)
        delta = {cmd: after[cmd]["calls"] - before.get(cmd, {}).get("calls", 0) for cmd in after}
        delta["info"] = delta.get("info", 0) - 1
        usec = after.get("evalsha", {}).get("usec", 0) - before.get("evalsha", {}).get("usec", 0)
        results.append({
            "name": name, "n": n, "wall": wall, "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
            "scripts": delta.get("evalsha", 0) + delta.get("eval", 0),
            "commands": sum(delta.values()),
            "redis_us": usec if make not in (ping,) else 0, "redis_cpu": redis_cpu,
            "top": sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)[:6],
        })
    await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=20000, help="calls per run")
    parser.add_argument("--callers", type=int, default=50)
    args = parser.parse_args()

    with fresh_redis() as (redis_url, redis_pid):
        bench_cpu0 = cpu_seconds(os.getpid())
        results = run_async(measure(redis_url, redis_pid, args.admissions, args.callers))
        bench_cpu = cpu_seconds(os.getpid()) - bench_cpu0

    ping_rate = results[0]["n"] / results[0]["wall"]
    print(f"\nRate limiter (shared/lua/admit.lua), {args.callers} concurrent asyncio callers, one async Redis "
          f"client, fresh Redis, {args.admissions} calls per run, {os.cpu_count()} cores")
    rows = []
    for r in results:
        rate = r["n"] / r["wall"]
        rows.append([
            r["name"], f"{rate:.0f}", f"{rate / ping_rate:.2f}", f"{r['scripts'] / r['n']:.2f}",
            f"{r['commands'] / r['n']:.1f}", f"{r['redis_us'] / r['n']:.1f}" if r["redis_us"] else "",
            f"{r['redis_cpu'] / r['n'] * 1e6:.1f}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())),
        ])
    print(table(["run", "calls/s", "vs PING", "EVALSHA/call", "commands/call", "Redis µs/call (EVALSHA)",
                 "Redis CPU µs/call", "outcomes"], rows, left_first=True))
    print("\nMost frequent commands per run (INFO commandstats deltas):")
    for r in results:
        print(f"  {r['name']}: " + ", ".join(f"{k} {v / r['n']:.2f}/call" for v, k in r["top"]))
    print(f"benchmark process CPU: {bench_cpu:.1f} s over all runs (the client side: redis-py + asyncio)")


if __name__ == "__main__":
    main()
