"""How the fleet scales with its processes, and where one Redis tops out.

    .venv/bin/python -m bench.scale [--workers 1 2 4] [--apis 1 2] [--jobs 3000] [--pings 3000] [--rounds 1]

For each layout (W provider worker processes of 200 slots, A API processes), on a fresh Redis,
in front of the fake provider at zero latency (gpt-4o-mini, 8 tokens), dev account (no limits):

- bare: N ``chatfleet.ping`` tasks through the same Redis and worker processes (Celery's floor);
- jobs: N ``POST /v4/jobs`` from 50 submitters spread evenly over the A APIs; jobs/s is
  N / (last ``finished_at`` - first ``created_at``), from the jobs' own timestamps. While they
  run, the benchmark reads one usage counter (an HGET per ledger shard and day every 50 ms), not the jobs, so that
  Redis's CPU is the fleet's own;
- latency: 300 synchronous ``POST /v4/chat-completions`` from one client, against the same
  call straight to the fake provider: the added p50.

From the CPU each process used (``/proc``): CPU per job by role, Redis's included, and from that
the projected ceiling of one Redis (one core: 1,000 ms / Redis ms per job). A role "saturates"
when its cores busy reach the cores it can use (Redis 1, each API or worker process 1, the
machine all of them); the table names the role closest to its cap. Layouts run in the order
given, ``--rounds`` times, so that drifting load on a shared machine shows as spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import orjson

from api.accounts import hash_key
from bench._stack import KEY, BenchStack, CpuWindow, percentile, run_async, table
from bench.overhead import close_clients, make_clients, run_level
from bench.throughput import BODY, MODEL, bare_pings, submit_jobs, wait_jobs
from deploy.devstack import wait_ready
from shared import keys
from shared.usage import utc_day

LATENCY_REQUESTS = 300


def finished_count(redis, account_id: str) -> int:
    """Jobs of the model the account has finished so far (today's and yesterday's ledger, so
    that a run across midnight UTC still counts)."""
    now = time.time()
    field = f"{MODEL}|requests"
    with redis.pipeline(transaction=False) as pipe:
        for day in {utc_day(now), utc_day(now - 86400)}:
            for shard in range(keys.SHARDS):
                pipe.hget(keys.usage_day(account_id, day, shard), field)
        return sum(int(v or 0) for v in pipe.execute())


def wait_finished(redis, account_id: str, target: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while finished_count(redis, account_id) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{finished_count(redis, account_id)} of {target} jobs finished after {timeout:g} s")
        time.sleep(0.05)


async def submit_spread(urls: list[str], n: int, submitters: int):
    """``n`` jobs from ``submitters`` submitters spread evenly over the APIs at ``urls``."""
    share = [n // len(urls) + (i < n % len(urls)) for i in range(len(urls))]
    subs = [submitters // len(urls) + (i < submitters % len(urls)) for i in range(len(urls))]
    parts = await asyncio.gather(*(submit_jobs(u, k, s) for u, k, s in zip(urls, share, subs) if k))
    ids = [i for p in parts for i in p[0]]
    lat = [x for p in parts for x in p[1]]
    return ids, lat, max(p[2] for p in parts), sum(p[3] for p in parts)


async def added_latency(api_url: str, fake_url: str, requests: int) -> tuple[float, float, int]:
    """p50 of direct and of fleet synchronous calls (s) from one client, errors."""
    direct_body = orjson.dumps({
        "model": MODEL, "messages": BODY["messages"], "stream": True, "stream_options": {"include_usage": True},
        "seed": 12345, "temperature": 0.2, "max_tokens": 8,
    })
    fleet_body = orjson.dumps(BODY)
    json_type = {"content-type": "application/json"}

    async def direct(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", content=direct_body, headers=json_type) as r:
            if r.status_code != 200:
                raise RuntimeError(f"direct: HTTP {r.status_code}")
            async for _ in r.aiter_lines():
                pass

    async def fleet(client: httpx.AsyncClient) -> None:
        r = await client.post("/v4/chat-completions", content=fleet_body, headers=json_type)
        if r.status_code != 200 or r.json()["token_usage"]["completion"] != 8:
            raise RuntimeError(f"fleet: HTTP {r.status_code} {r.text[:200]}")

    d_clients = make_clients(1, False, base_url=fake_url, headers={"authorization": "Bearer sk-bench"})
    f_clients = make_clients(1, False, base_url=api_url, headers={"x-api-key": KEY})
    try:
        d_lat, _, d_err = await run_level(direct, d_clients, requests, 30)
        f_lat, _, f_err = await run_level(fleet, f_clients, requests, 30)
    finally:
        await close_clients(d_clients)
        await close_clients(f_clients)
    return percentile(d_lat, 50), percentile(f_lat, 50), d_err + f_err


def run_layout(workers: int, apis: int, args) -> dict:
    stack = BenchStack(fake_knobs={"ttft_ms": 0, "tokens_per_s": 0, "record_limit": 0})
    try:
        names = ["interactive"] + [f"interactive{n}" for n in range(2, workers + 1)]
        for name in names:
            stack.start_worker(200, name=name)
        urls = [stack.start_api(name="api" if i == 0 else f"api{i + 1}") for i in range(apis)]
        for name in names:
            stack.wait_ready(worker_name=name)
        for url in urls[1:]:
            wait_ready(url, [keys.QUEUE_INTERACTIVE], timeout=120, fleet=stack.fleet)
        # The Celery app reads its broker from the settings at import (one layout per process).
        os.environ["CHATFLEET_REDIS_URL"] = stack.redis_url
        from shared.connections import sync_redis
        from worker.celery_app import app

        if app.conf.broker_url != stack.redis_url:
            raise RuntimeError(f"the Celery app was configured for {app.conf.broker_url}, not {stack.redis_url}")
        redis = sync_redis(stack.redis_url)
        account_id = redis.hget(keys.api_key(hash_key(KEY)), "account_id")
        roles = {"api": [stack.pid("api" if i == 0 else f"api{i + 1}") for i in range(apis)],
                 "worker": [stack.pid(f"worker-{n}") for n in names],
                 "redis": [stack.pid("redis")], "fake + bench": [stack.fake.proc.pid, os.getpid()]}
        pids = {f"{role}:{i}": pid for role, ps in roles.items() for i, pid in enumerate(ps)}

        counter = "chatfleet:bench:pings"
        bare_pings(redis, app, 200, 8, counter)
        window = CpuWindow(pids)
        bare = bare_pings(redis, app, args.pings, 8, counter)
        bare_cpu = window.stop()

        run_async(submit_spread(urls, 200, args.submitters))
        wait_finished(redis, account_id, 200)
        before = finished_count(redis, account_id)
        window.start()
        ids, submit_lat, _, submit_errors = run_async(submit_spread(urls, args.jobs, args.submitters))
        wait_finished(redis, account_id, before + len(ids))
        cpu = window.stop()
        wall = time.monotonic() - window.t0
        jobs = wait_jobs(redis, ids)

        d_p50, f_p50, lat_errors = run_async(added_latency(urls[0], stack.fake.base_url, LATENCY_REQUESTS))
        redis.close()
    finally:
        stack.close()

    def by_role(sample: dict[str, float]) -> dict[str, float]:
        out = {role: sum(v for k, v in sample.items() if k.split(":")[0] == role) for role in roles}
        out["machine"] = sample["machine"]
        out["others"] = sample["others"]
        return out

    rate = len(jobs) / (max(j[2] for j in jobs) - min(j[1] for j in jobs))
    busy = by_role(cpu)
    caps = {"redis": 1, "api": apis, "worker": workers, "machine": os.cpu_count() or 1}
    utilisation = {role: busy[role] / cap for role, cap in caps.items()}
    return {
        "workers": workers, "apis": apis, "bare_rate": bare["n"] / bare["wall"], "rate": rate,
        "busy": busy, "bare_busy": by_role(bare_cpu),
        "ms_per_job": {role: v * wall / len(jobs) * 1000 for role, v in busy.items()},
        "bare_redis_ms": by_role(bare_cpu)["redis"] * bare["wall"] / bare["n"] * 1000,
        "utilisation": utilisation, "first": max(utilisation, key=utilisation.get),
        "direct_p50": d_p50, "fleet_p50": f_p50,
        "statuses": {s: sum(1 for j in jobs if j[0] == s) for s in {j[0] for j in jobs}},
        "errors": submit_errors + lat_errors, "submit_p50": percentile(submit_lat, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--apis", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", type=int, nargs=2, metavar=("WORKERS", "APIS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one layout, in a process of its own (the Celery app binds its broker at import)
        print(json.dumps(run_layout(*args.one, args)))
        return

    results = []
    for round_ in range(args.rounds):
        for apis in args.apis:
            for workers in args.workers:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.scale", "--one", str(workers), str(apis), "--jobs", str(args.jobs),
                     "--pings", str(args.pings), "--submitters", str(args.submitters)],
                    check=True, stdout=subprocess.PIPE, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                r["round"] = round_
                results.append(r)
                print(f"  {workers} worker(s), {apis} API(s): {r['rate']:.0f} jobs/s, bare {r['bare_rate']:.0f}/s, "
                      f"{r['statuses']}", flush=True)

    # Each layout against the fewest-workers layout with as many APIs, of the same round.
    base = {(r["round"], r["apis"]): r["rate"] for r in results if r["workers"] == min(args.workers)}
    def ms(v: float) -> str:
        return f"{v * 1000:.2f}"

    print(f"\nJobs per second by layout, {MODEL}, 8 tokens, fake provider at zero latency, {args.jobs} jobs from "
          f"{args.submitters} submitters per layout, {os.cpu_count()} cores")
    print(table(
        ["workers", "APIs", "bare/s", "jobs/s", f"x {min(args.workers)} worker(s)", "jobs/bare",
         "added p50 ms (1 client)", "Redis ms/job", "Redis ceiling jobs/s", "busiest (share of its cap)"],
        [[str(r["workers"]), str(r["apis"]), f"{r['bare_rate']:.0f}", f"{r['rate']:.0f}",
          f"{r['rate'] / base[(r['round'], r['apis'])]:.2f}", f"{r['rate'] / r['bare_rate']:.2f}",
          ms(r["fleet_p50"] - r["direct_p50"]), f"{r['ms_per_job']['redis']:.3f}",
          f"{1000 / r['ms_per_job']['redis']:.0f}",
          f"{r['first']} ({r['utilisation'][r['first']]:.0%})"] for r in results]))
    roles = ["api", "worker", "redis", "fake + bench", "others", "machine"]
    print("\nCPU per job, ms, by role (all processes of the role together), and cores busy:")
    print(table(["workers", "APIs", *roles, *(f"{r} cores" for r in roles)],
                [[str(r["workers"]), str(r["apis"]), *(f"{r['ms_per_job'][k]:.2f}" for k in roles),
                  *(f"{r['busy'][k]:.2f}" for k in roles)] for r in results]))
    redis_ms = [r["ms_per_job"]["redis"] for r in results]
    bare_ms = [r["bare_redis_ms"] for r in results]
    worker_ms = [r["ms_per_job"]["worker"] for r in results]
    api_ms = [r["ms_per_job"]["api"] for r in results]
    print(f"\nRedis CPU per job {min(redis_ms):.3f}-{max(redis_ms):.3f} ms (a bare ping: "
          f"{min(bare_ms):.3f}-{max(bare_ms):.3f} ms): one Redis core tops out near "
          f"{1000 / max(redis_ms):.0f}-{1000 / min(redis_ms):.0f} jobs/s.")
    # At these per-job costs, the cores each role needs to keep one Redis at its ceiling.
    print(f"To reach it: ~{min(worker_ms) / max(redis_ms):.1f}-{max(worker_ms) / min(redis_ms):.1f} worker cores "
          f"({min(worker_ms):.2f}-{max(worker_ms):.2f} ms per job) and ~{min(api_ms) / max(redis_ms):.1f}-"
          f"{max(api_ms) / min(redis_ms):.1f} API cores ({min(api_ms):.2f}-{max(api_ms):.2f} ms per job); "
          f"the role closest to its cap in each layout is in the first table.")
    errors = sum(r["errors"] for r in results)
    print(f"errors: {errors}")


if __name__ == "__main__":
    main()
