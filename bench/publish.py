"""The worker's token publish, client side: through redis-py's asyncio client and through the
worker's script channel.

    .venv/bin/python -m bench.publish [--rounds 200] [--jobs 1 50 500] [--tokens 1 4]

A worker publishes the tokens of all its running jobs in one ``publish_events.lua`` EVALSHA
(``JobStore.publish_many``): nine arguments per job and token. On a fresh Redis (started here),
the same publishes run, size by size, through redis-py's asyncio client
(``shared.connections.async_redis``, what the API uses) and through the worker's pipelined
script connection (``shared.scriptchannel``); prints the client's CPU per job and token, the
wall time per publish (the round trip, Lua included) and Redis's CPU per publish.
"""

from __future__ import annotations

import argparse
import os
import time

from bench._stack import cpu_seconds, fresh_redis, run_async, table
from shared import keys
from shared.connections import async_redis
from shared.events import TOKEN
from shared.jobs import JobStore
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings

MIN_JOB_TOKENS = 20_000  # per row at least, so that small publishes are timed over enough of them
DATA = '{"chat_completion":{"message":{"role":"assistant","content":"tok12 "},"finish_reason":null}}'


async def measure(redis_url: str, redis_pid: int, rounds: int, sizes: list[tuple[int, int]]) -> list[dict]:
    clients = {"redis-py (asyncio client)": async_redis(redis_url),
               "script channel (the worker's)": async_redis(redis_url)}
    channel = ScriptChannel.for_url(redis_url)
    settings = Settings(redis_url=redis_url)
    results = []
    for jobs, tokens in sizes:
        seq = 0
        batch_for = {}
        for name, client in clients.items():
            ids = [f"bench-{name[:7]}-{jobs}-{tokens}-{i}" for i in range(jobs)]
            for job_id in ids:
                await client.set(keys.job_lease(job_id), "attempt")
            batch_for[name] = ids
        stores = {name: JobStore(client, settings, channel if "channel" in name else None)
                  for name, client in clients.items()}
        for name, store in stores.items():  # warm-up: connection, script loaded
            seq += 1
            await store.publish_many([(j, "attempt", [(seq, TOKEN, DATA)]) for j in batch_for[name]])
        for name, store in stores.items():
            ids = batch_for[name]
            n = max(rounds, MIN_JOB_TOKENS // (jobs * tokens))
            cpu0, redis0, wall0 = time.process_time(), cpu_seconds(redis_pid), time.perf_counter()
            for r in range(n):
                first = seq + 1 + r * tokens
                events = [(first + t, TOKEN, DATA) for t in range(tokens)]
                await store.publish_many([(j, "attempt", events) for j in ids])
            wall = time.perf_counter() - wall0
            cpu, redis_cpu = time.process_time() - cpu0, cpu_seconds(redis_pid) - redis0
            results.append({"name": name, "jobs": jobs, "tokens": tokens, "rounds": n, "cpu": cpu,
                            "wall": wall, "redis": redis_cpu})
        seq += max(rounds, MIN_JOB_TOKENS // (jobs * tokens)) * tokens
    for client in clients.values():
        await client.aclose()
    if channel is not None:
        await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200,
                        help=f"publishes per size and side (more where they carry under {MIN_JOB_TOKENS:,} job-tokens)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 50, 500], help="jobs per publish")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4], help="tokens per job and publish")
    args = parser.parse_args()

    sizes = [(j, t) for j in args.jobs for t in args.tokens]
    with fresh_redis() as (redis_url, redis_pid):
        results = run_async(measure(redis_url, redis_pid, args.rounds, sizes))

    print(f"\nToken publish (publish_events.lua, one EVALSHA per publish), fresh Redis, {os.cpu_count()} cores")
    rows = []
    base = {}
    for r in results:
        per = r["cpu"] / (r["rounds"] * r["jobs"] * r["tokens"]) * 1e6
        key = (r["jobs"], r["tokens"])
        ratio = f"{per / base[key]:.2f}" if key in base else ""
        base.setdefault(key, per)
        rows.append([r["name"], str(r["jobs"]), str(r["tokens"]), str(r["rounds"]), f"{per:.1f}", ratio,
                     f"{r['wall'] / r['rounds'] * 1000:.2f}", f"{r['redis'] / r['rounds'] * 1000:.2f}"])
    print(table(["client", "jobs", "tokens/job", "publishes", "client CPU µs per job-token", "vs redis-py",
                 "wall ms per publish", "Redis CPU ms per publish"], rows, left_first=True))


if __name__ == "__main__":
    main()
