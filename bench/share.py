"""Spend control and fair share across accounts, measured on a real fleet.

    .venv/bin/python -m bench.share [--part budget|provider|local|all] [--heavy 5000] [--light 50]

- budget: ``--concurrent`` (200) synchronous chat completions at once, on one account whose budget
  fits 20 of them (20 times what one costs), on the fake provider; the same on 2 API and 2
  worker processes (the requests spread over both APIs). Prints what was spent against the
  budget, what is left, and one request's worst case (what admission holds for it).
- provider: account B's ``--light`` jobs alone, then account A's ``--heavy`` jobs submitted and B's
  right after them, on the fake provider (each job ~``--job-seconds``); B's latency (submission
  to finish) and queue wait (to its start), p50 and p99, with fair share on and off
  (``CHATFLEET_FAIR_SHARE_QUEUED=0``) in the same run; A's remaining jobs are then cancelled.
- local: the same on the local model (``--local-heavy`` A jobs, 2 slots).

Every job is submitted through ``POST /v4/jobs`` and read back from ``GET /v4/jobs/{id}``
(``created_at``, ``started_at``, ``finished_at``: the fleet's own clock).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench._stack import BenchStack, percentile, table
from deploy.devstack import Fleet, api_argv, free_port, start_redis, wait_ready, worker_argv
from shared import keys

ADMIN = "cf-bench-admin"
FAST = {"model": "gpt-4o-mini", "messages": [{"content": "hello there"}], "model_parameters": {"max_tokens": 16}}
LOCAL = "smollm2-135m-instruct"


def ts(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


async def new_account(base: str, name: str, **limits) -> str:
    async with httpx.AsyncClient(base_url=base, headers={"x-api-key": ADMIN}, timeout=30) as admin:
        r = await admin.post("/v4/admin/accounts", json={"name": name, "limits": limits})
        r.raise_for_status()
        account = r.json()["id"]
        r = await admin.post(f"/v4/admin/accounts/{account}/api-keys")
        r.raise_for_status()
        return r.json()["key"]


async def gather_bounded(n: int, limit: int, make):
    gate = asyncio.Semaphore(limit)

    async def one(i: int):
        async with gate:
            return await make(i)
    return await asyncio.gather(*(one(i) for i in range(n)))


# --- budget -------------------------------------------------------------------------------------


async def budget_run(bases: list[str], concurrent: int, fits: int) -> list[str]:
    free = await new_account(bases[0], "bench-free")
    async with httpx.AsyncClient(base_url=bases[0], headers={"x-api-key": free}, timeout=120) as c:
        one = (await c.post("/v4/chat-completions", json=FAST)).json()
        cost = (await c.get("/v4/usage")).json()["data"][0]["cost_usd"]
    del one
    budget = fits * cost
    key = await new_account(bases[0], "bench-budget", budget_usd=budget, budget_period="day")
    clients = [httpx.AsyncClient(base_url=b, headers={"x-api-key": key}, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrent)) for b in bases]
    try:
        started = time.perf_counter()
        answers = await asyncio.gather(*(clients[i % len(clients)].post("/v4/chat-completions", json=FAST)
                                         for i in range(concurrent)))
        wall = time.perf_counter() - started
        state = next(b for b in (await clients[0].get("/v4/usage")).json()["budgets"] if b["scope"] == "account")
    finally:
        for c in clients:
            await c.aclose()
    ok = sum(a.status_code == 200 for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    worst = max((float(m.group(1)) for a in refused
                 if (m := re.search(r"may cost up to \$([0-9.]+)", a.json().get("detail", "")))), default=float("nan"))
    spent = state["spent_usd"]
    return [f"{len(bases)} API + {len(bases)} workers", str(concurrent), str(ok), str(len(refused)),
            str(concurrent - ok - len(refused)), f"{budget * 1e6:.3f}", f"{spent * 1e6:.3f}",
            f"{(budget - spent) * 1e6:.3f}", f"{worst * 1e6:.3f}", f"{cost * 1e6:.3f}",
            f"{max(spent - budget, 0) * 1e6:.3f}", f"{state['reserved_usd'] * 1e6:.3f}", f"{wall:.1f}"]


def part_budget(concurrent: int, fits: int) -> None:
    rows = []
    with BenchStack(extra_env={"CHATFLEET_ADMIN_API_KEY": ADMIN}) as stack:
        stack.start_api()
        stack.start_worker()
        stack.wait_ready()
        rows.append(asyncio.run(budget_run([stack.base_url], concurrent, fits)))
        second = stack.start_api("api-2")
        stack.start_worker(name="interactive-2")
        stack.wait_ready("interactive-2")
        wait_ready(second, [keys.QUEUE_INTERACTIVE], fleet=stack.fleet)
        rows.append(asyncio.run(budget_run([stack.base_url, second], concurrent, fits)))
    print(f"\nBudget: {concurrent} concurrent synchronous requests (gpt-4o-mini on the fake provider, max_tokens 16) "
          f"against a budget of {fits} times one request's cost (micro-USD); {os.cpu_count()} cores")
    print(table(["processes", "requests", "200", "429 budget", "other", "budget µ$", "spent µ$", "left µ$",
                 "worst case µ$", "one costs µ$", "over budget µ$", "held after µ$", "wall s"], rows, True))


# --- fair share -----------------------------------------------------------------------------------


async def submit_all(base: str, key: str, body: dict, n: int, parallel: int = 32) -> list[str]:
    async with httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=120,
                                 limits=httpx.Limits(max_connections=parallel)) as c:
        async def one(i: int) -> str:
            r = await c.post("/v4/jobs", json=body)
            r.raise_for_status()
            return r.json()["id"]
        return await gather_bounded(n, parallel, one)


async def wait_done(base: str, key: str, ids: list[str], timeout: float) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=60) as c:
        deadline = time.monotonic() + timeout
        done: dict[str, dict] = {}
        while len(done) < len(ids) and time.monotonic() < deadline:
            for job_id in [i for i in ids if i not in done]:
                job = (await c.get(f"/v4/jobs/{job_id}")).json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
            await asyncio.sleep(0.1)
        if len(done) < len(ids):
            raise RuntimeError(f"{len(ids) - len(done)} jobs not done after {timeout:g} s")
        return [done[i] for i in ids]


async def cancel_all(base: str, key: str, ids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=60) as c:
        await gather_bounded(len(ids), 32, lambda i: c.post(f"/v4/jobs/{ids[i]}/cancel"))


def figures(jobs: list[dict]) -> tuple[list[float], list[float]]:
    latency = [ts(j["finished_at"]) - ts(j["created_at"]) for j in jobs]
    wait = [ts(j["started_at"]) - ts(j["created_at"]) for j in jobs if j.get("started_at")]
    return latency, wait


async def fairness_run(base: str, heavy_key: str, light_key: str, body: dict, heavy: int, light: int,
                       timeout: float) -> dict[str, tuple[list[float], list[float]]]:
    alone = await wait_done(base, light_key, await submit_all(base, light_key, body, light), timeout)
    heavy_ids = await submit_all(base, heavy_key, body, heavy)
    light_ids = await submit_all(base, light_key, body, light)
    shared = await wait_done(base, light_key, light_ids, timeout)
    await cancel_all(base, heavy_key, heavy_ids)
    return {"alone": figures(alone), "behind": figures(shared)}


def fairness_rows(where: str, share: str, result) -> list[list[str]]:
    rows = []
    alone_p50 = percentile(result["alone"][0], 50)
    for side, (latency, wait) in result.items():
        rows.append([where, share, "B alone" if side == "alone" else "B after A's backlog",
                     f"{percentile(latency, 50):.2f}", f"{percentile(latency, 99):.2f}",
                     f"{percentile(wait, 50):.2f}", f"{percentile(wait, 99):.2f}",
                     f"{percentile(latency, 50) / alone_p50:.2f}"])
    return rows


def part_provider(heavy: int, light: int, job_seconds: float) -> list[list[str]]:
    rows = []
    tokens = 16
    for share in ("32", "0"):
        env = {"CHATFLEET_ADMIN_API_KEY": ADMIN, "CHATFLEET_FAIR_SHARE_QUEUED": share}
        with BenchStack(extra_env=env, fake_knobs={"tokens_per_s": tokens / job_seconds}) as stack:
            stack.start_api()
            stack.start_worker()
            stack.wait_ready()
            a = asyncio.run(new_account(stack.base_url, "heavy"))
            b = asyncio.run(new_account(stack.base_url, "light"))
            body = {**FAST, "model_parameters": {"max_tokens": tokens}}
            result = asyncio.run(fairness_run(stack.base_url, a, b, body, heavy, light, 600))
            rows += fairness_rows("provider (200 slots)", "on, 32 queued" if share != "0" else "off", result)
    return rows


def part_local(heavy: int, light: int) -> list[list[str]]:
    rows = []
    for share in ("1", "0"):
        fleet = Fleet()
        tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
        try:
            redis_url = start_redis(fleet, free_port(), tmp / "redis", tmp / "log")
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")},
                   "CHATFLEET_REDIS_URL": redis_url, "CHATFLEET_ADMIN_API_KEY": ADMIN,
                   "CHATFLEET_DATA_DIR": str(tmp), "CHATFLEET_LOCAL_MODEL_SLOTS": "2",
                   "CHATFLEET_LOG_LEVEL": "WARNING", "CHATFLEET_FAIR_SHARE_QUEUED_LOCAL": share}
            port = free_port()
            fleet.spawn("worker-local", worker_argv("local", [keys.QUEUE_LOCAL], 2), env, tmp / "log")
            fleet.spawn("api", api_argv("127.0.0.1", port), env, tmp / "log")
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, [keys.QUEUE_LOCAL], fleet=fleet)
            a = asyncio.run(new_account(base, "heavy"))
            b = asyncio.run(new_account(base, "light"))
            body = {"model": LOCAL, "messages": [{"content": "Name a river."}],
                    "model_parameters": {"max_tokens": 8, "temperature": 0}}
            result = asyncio.run(fairness_run(base, a, b, body, heavy, light, 900))
            rows += fairness_rows("local model (2 slots)", "on, 1 queued" if share != "0" else "off", result)
        finally:
            fleet.stop_all()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["budget", "provider", "local", "all"], default="all")
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--fits", type=int, default=20)
    parser.add_argument("--heavy", type=int, default=5000)
    parser.add_argument("--light", type=int, default=50)
    parser.add_argument("--local-heavy", type=int, default=1000)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    args = parser.parse_args()
    if args.part in ("budget", "all"):
        part_budget(args.concurrent, args.fits)
    rows = []
    if args.part in ("provider", "all"):
        rows += part_provider(args.heavy, args.light, args.job_seconds)
    if args.part in ("local", "all"):
        rows += part_local(args.local_heavy, args.light)
    if rows:
        print(f"\nFair share: account A submits its backlog (provider {args.heavy} jobs of ~{args.job_seconds:g} s, "
              f"local {args.local_heavy} jobs of 8 tokens), then account B {args.light}; B's seconds, "
              f"submission to finish (latency) and to start (wait); {os.cpu_count()} cores")
        print(table(["queue", "fair share", "B's jobs", "latency p50", "p99", "wait p50", "p99",
                     "p50 / alone"], rows, True))


if __name__ == "__main__":
    main()
