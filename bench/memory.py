"""What a day of traffic costs in Redis: memory per finished job, per batch line, per open
stream and per stored file byte, and the projection for a day of jobs.

    .venv/bin/python -m bench.memory [--jobs 2000] [--lines 2000] [--streams 300] [--file-mib 8]
                                     [--per-day 10000000] [--peak 3]

One fleet (Redis, the API, one provider worker; the fake provider at zero latency) on a fresh
Redis. Each figure is Redis's own ``used_memory`` (``INFO memory``) after the step, less before
it, divided by what the step added:

- finished jobs: ``--jobs`` jobs of 8 and of 64 tokens (``POST /v4/jobs``, the SGP door), every one
  ended, with its record, result, event stream and usage (kept ``CHATFLEET_JOB_RETENTION_SECONDS``);
  the two sizes give the cost of a job and of each token of it;
- batch lines: a ``--lines``-line batch of 8-token lines, ended (its lines' jobs, results,
  counters);
- open streams: ``--streams`` jobs streaming (2 tokens/s) with a client on each job's stream
  through the API, measured halfway;
- file bytes: one ``--file-mib`` MiB upload (``POST /v1/files``).

Then the projection: ``--per-day`` jobs a day retained for the retention (the steady state),
the memory that takes, and the Redis cores at ``--peak`` times the day's mean rate, from the
Redis CPU per job of ``bench.throughput`` (measured here too, over the finished jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import httpx

from bench._stack import KEY, BenchStack, cpu_seconds, table
from shared.connections import async_redis
from shared.settings import Settings

JOB = {"model": "gpt-4o-mini", "messages": [{"content": "hello there"}]}


async def used(redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def submit(client: httpx.AsyncClient, n: int, tokens: int) -> list[str]:
    gate = asyncio.Semaphore(32)

    async def one(_: int) -> str:
        async with gate:
            r = await client.post("/v4/jobs", json={**JOB, "model_parameters": {"max_tokens": tokens}})
            r.raise_for_status()
            return r.json()["id"]
    return await asyncio.gather(*(one(i) for i in range(n)))


async def until_done(redis, ids: list[str], timeout: float = 600) -> None:
    from shared import keys
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hget(keys.job(job_id), "status")
            statuses = await pipe.execute()
        pending = [j for j, s in zip(pending, statuses) if s not in ("succeeded", "failed", "cancelled")]
        await asyncio.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} jobs not done")


async def measure(stack: BenchStack, jobs: int, lines: int, streams: int, file_mib: int) -> dict:
    redis = async_redis(stack.state_url)
    out: dict = {}
    redis_pid = stack.pid("redis")
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": KEY}, timeout=120,
                                 limits=httpx.Limits(max_connections=400)) as client:
        await until_done(redis, await submit(client, 50, 8))  # warm: scripts loaded, indexes made
        stack.fake.config(tokens=64)  # answers as long as max_tokens lets them be
        for tokens in (8, 64):
            before = await used(redis)
            cpu0 = cpu_seconds(redis_pid) if redis_pid else 0.0
            ids = await submit(client, jobs, tokens)
            await until_done(redis, ids)
            await asyncio.sleep(1)
            out[f"job{tokens}"] = (await used(redis) - before) / jobs
            out[f"redis_cpu{tokens}"] = (cpu_seconds(redis_pid) - cpu0) / jobs if redis_pid else float("nan")

        before = await used(redis)
        body = {"requests": [{"custom_id": f"l{i}", "url": "/v4/chat-completions",
                              "body": {**JOB, "model_parameters": {"max_tokens": 8}}} for i in range(lines)]}
        batch = (await client.post("/v4/batches", json=body)).json()
        while (await client.get(f"/v4/batches/{batch['id']}")).json()["status"] not in (
                "completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        out["line"] = (await used(redis) - before) / lines

        stack.fake.config(tokens_per_s=2, tokens=40)  # ~20 s each
        before = await used(redis)
        ids = await submit(client, streams, 40)
        opened: list = []

        async def follow(job_id: str) -> None:
            async with client.stream("GET", f"/v4/jobs/{job_id}/stream") as r:
                opened.append(job_id)
                async for _ in r.aiter_lines():
                    pass
        followers = [asyncio.create_task(follow(j)) for j in ids]
        deadline = time.monotonic() + 60
        while len(opened) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(8)  # halfway through 40 tokens at 2/s... a quarter: all open, tokens flowing
        out["stream"] = (await used(redis) - before) / streams
        out["streams_open"] = len(opened)
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        stack.fake.config(tokens_per_s=0)
        for job_id in ids:
            await client.post(f"/v4/jobs/{job_id}/cancel")

        size = file_mib * 1024 * 1024
        before = await used(redis)
        r = await client.post("/v1/files", headers={"authorization": f"Bearer {KEY}"},
                              files={"file": ("big.jsonl", b"x" * (size - 1) + b"\n")}, data={"purpose": "batch"})
        r.raise_for_status()
        await asyncio.sleep(1)
        out["file_byte"] = (await used(redis) - before) / size
    await redis.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--file-mib", type=int, default=8)
    parser.add_argument("--per-day", type=int, default=10_000_000)
    parser.add_argument("--peak", type=float, default=3.0)
    parser.add_argument("--master-gib", type=float, default=25.0, help="memory one cluster master is given")
    args = parser.parse_args()
    settings = Settings()
    with BenchStack() as stack:
        stack.start_api()
        stack.start_worker()
        stack.wait_ready()
        m = asyncio.run(measure(stack, args.jobs, args.lines, args.streams, args.file_mib))
    per_token = (m["job64"] - m["job8"]) / 56
    per_job = m["job8"]  # an 8-token answer, the benchmarks' usual
    retention = settings.job_retention_seconds
    retained = args.per_day * retention / 86400
    memory_gib = retained * per_job / 2**30
    rate = args.per_day / 86400 * args.peak
    cores = rate * m["redis_cpu8"]
    print(f"\nRedis memory (used_memory deltas), fresh Redis, {os.cpu_count()} cores")
    print(table(["what", "bytes each", "counted over"], [
        ["finished job, 8 tokens (record, result, events, usage)", f"{m['job8']:,.0f}", f"{args.jobs} jobs"],
        ["finished job, 64 tokens", f"{m['job64']:,.0f}", f"{args.jobs} jobs"],
        ["each token of a finished job", f"{per_token:,.1f}", "the two sizes' difference / 56"],
        ["batch line, ended (8 tokens)", f"{m['line']:,.0f}", f"{args.lines} lines"],
        ["open stream (job streaming, a client following it)", f"{m['stream']:,.0f}",
         f"{m['streams_open']} streams, ~16 tokens in"],
        ["stored file byte", f"{m['file_byte']:.3f}", f"{args.file_mib} MiB"],
    ], left_first=True))
    masters = max(1, int(-(-memory_gib // args.master_gib)))
    print(f"\nProjection: {args.per_day:,} jobs a day of 8 tokens, kept {retention / 3600:g} h "
          f"(CHATFLEET_JOB_RETENTION_SECONDS): {retained:,.0f} jobs held at once, "
          f"{memory_gib:,.1f} GiB; at {args.peak:g}x the mean rate ({rate:,.0f} jobs/s) Redis spends "
          f"{m['redis_cpu8'] * 1000:.3f} ms of CPU per job: {cores:.2f} cores; "
          f"{masters} cluster master(s) at {args.master_gib:g} GiB each.")


if __name__ == "__main__":
    main()
