"""The console's pages with a large account: how fast they answer.

    .venv/bin/python -m bench.console [--jobs 100000] [--batches 1000] [--requests 200]

One API process on a Redis of its own (``bench/_stack.py``, no worker: the account's history
is written straight into Redis as the fleet writes it: job records in their shards with the
account's index, batches, 30 days of usage). The account signs in as a browser does (the
sign-in form, its session cookie), then each page is fetched ``--requests`` times, one at a
time: the jobs list (first page, a page further back, filtered by status, by model), a job,
the usage page, the batches list. Prints p50 and p99 per page (target: p50 ≤ 50 ms for the
jobs list and the usage page).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from bench._stack import BenchStack, percentile, table
from shared import keys
from shared.connections import async_redis
from shared.jobs import new_job_id
from shared.usage import COUNTERS, day_score

ADMIN = "cf-bench-admin"
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-haiku-20240307", "smollm2-135m-instruct")
STATUSES = ("succeeded",) * 17 + ("failed", "cancelled", "succeeded")


async def seed(redis_url: str, account_id: str, jobs: int, batches: int) -> str:
    """Write the account's history; returns a job id to show."""
    redis = async_redis(redis_url)
    now = time.time()
    shown = ""
    spec = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise this."}],
                         "params": {"temperature": 0.2, "max_tokens": 64}, "prompt_bytes": 15}).decode()
    for start in range(0, jobs, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 2000, jobs)):
                job_id = new_job_id()
                created = now - (jobs - i) * 25  # one every 25 s: 100,000 span 29 days
                status = STATUSES[i % len(STATUSES)]
                model = MODELS[i % len(MODELS)]
                usage = {"model": model, "prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
                         "cost_usd": 0.0000264, "latency_ms": 800, "estimated": False}
                pipe.hset(keys.job(job_id), mapping={
                    "id": job_id, "account_id": account_id, "model": model, "queue": keys.QUEUE_INTERACTIVE,
                    "status": status, "spec": spec, "created_at": repr(created), "updated_at": repr(created + 1),
                    "started_at": repr(created + 0.1), "finished_at": repr(created + 1), "attempts": "1",
                    "usage": orjson.dumps(usage).decode(),
                    "result": orjson.dumps({"chat_completion": {"message": {"role": "assistant",
                                                                            "content": "A summary."},
                                                                "finish_reason": "stop"}}).decode()})
                pipe.zadd(keys.account_jobs(account_id, keys.shard_of(job_id)), {job_id: created})
                shown = job_id
            await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(batches):
            batch_id = f"batch_{random.getrandbits(120):030x}"
            created = now - (batches - i) * 2500
            pipe.hset(keys.batch(batch_id), mapping={
                "id": batch_id, "account_id": account_id, "status": "completed", "completion_window": "24h",
                "created_at": repr(created), "completed_at": repr(created + 600), "total": 100, "completed": 98,
                "failed": 2})
            pipe.zadd(keys.account_batches(account_id), {batch_id: created})
        today = datetime.now(UTC).date()
        for d in range(30):
            day = (today - timedelta(days=d)).isoformat()
            shard = d % keys.SHARDS
            for model in MODELS:
                for counter in COUNTERS:
                    pipe.hincrby(keys.usage_day(account_id, day, shard), f"{model}|{counter}", 1000 + d)
            pipe.zadd(keys.usage_days(account_id, shard), {day: day_score(day)})
        await pipe.execute()
    await redis.aclose()
    return shown


def signed_in(base: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60)
    form = client.get("/console/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    r = client.post("/console/login", data={"key": key, "csrf": csrf})
    if r.status_code != 303:
        raise RuntimeError(f"sign-in failed: {r.status_code} {r.text[:200]}")
    return client


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with BenchStack(extra_env={"CHATFLEET_ADMIN_API_KEY": ADMIN}) as stack:
        base = stack.start_api()
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        admin = httpx.Client(base_url=base, headers={"x-api-key": ADMIN}, timeout=30)
        account_id = admin.post("/v4/admin/accounts", json={"name": "large"}).json()["id"]
        key = admin.post(f"/v4/admin/accounts/{account_id}/api-keys").json()["key"]
        started = time.perf_counter()
        job_id = asyncio.run(seed(stack.redis_url, account_id, args.jobs, args.batches))
        seeded = time.perf_counter() - started
        client = signed_in(base, key)
        first = client.get("/console/jobs").text
        older = re.search(r'href="\?status=&amp;model=&amp;before=([0-9.e+]+)"', first).group(1)
        pages = [("jobs list, first page", "/console/jobs"),
                 ("jobs list, next page", f"/console/jobs?before={older}"),
                 ("jobs list, status=failed", "/console/jobs?status=failed"),
                 ("jobs list, model=gpt-4o", "/console/jobs?model=gpt-4o"),
                 ("a job", f"/console/jobs/{job_id}"),
                 ("usage, 30 days", "/console/usage"),
                 ("batches list", "/console/batches")]
        rows = []
        for name, path in pages:
            ms = timed(client, path, args.requests)
            rows.append([name, f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}"])
    print(f"\nConsole pages, one account with {args.jobs:,} jobs and {args.batches:,} batches (seeded in "
          f"{seeded:.0f} s), {args.requests} requests each one at a time, 1 API process, {os.cpu_count()} cores")
    print(table(["page", "p50 ms", "p99 ms"], rows, left_first=True))


if __name__ == "__main__":
    main()
