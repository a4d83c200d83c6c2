"""End-to-end jobs per second through the fleet, vs a bare Celery task round trip.

    .venv/bin/python -m bench.throughput [--jobs 3000] [--pings 3000] [--submitters 50] [--workers 1]
                                         [--rabbitmq] [--state-cluster]

One Redis (with ``--rabbitmq``, RabbitMQ as Celery's broker and the Redis the state store
only; with ``--state-cluster``, the state store on a Redis Cluster of three masters), one API
process, one provider worker process (200 slots; ``--workers N`` starts N), the fake provider at
zero latency (gpt-4o-mini, 8 tokens per answer), dev account (no limits). In the same run, on the
same broker and the same worker processes:

- bare: N ``chatfleet.ping`` tasks (INCR a counter, nothing else) sent with
  ``app.send_task(..., queue="chatfleet.interactive")`` from a thread pool, timed from the
  first send until the counter reaches N;
- fleet: N ``POST /v4/jobs`` from 50 concurrent submitters; the job hashes are then read
  straight from Redis (pipelined) until every job has ended; throughput is
  N / (last ``finished_at`` - first ``created_at``).

Prints both rates, fleet/bare, and the CPU each process spent per job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from bench._stack import KEY, BenchStack, CpuWindow, percentile, run_async, table
from shared import keys

MODEL = "gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say eight words about lighthouses."}],
        "model_parameters": {"max_tokens": 8}}
BODY_BYTES = orjson.dumps(BODY)


def bare_pings(redis, app, n: int, threads: int, counter: str) -> dict:
    redis.delete(counter)

    def send(_):
        app.send_task("chatfleet.ping", args=[counter], queue=keys.QUEUE_INTERACTIVE)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(n)))
    sent = time.perf_counter() - start
    deadline = time.monotonic() + 300
    while int(redis.get(counter) or 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {redis.get(counter)} of {n} pings ran within 300 s")
        time.sleep(0.002)
    return {"n": n, "wall": time.perf_counter() - start, "sent": sent}


async def submit_jobs(base_url: str, n: int, submitters: int) -> tuple[list[str], list[float], float, int]:
    """Each submitter has its own client and keep-alive connection: httpx's pool scans all its
    connections on every request, which on 2 cores would take CPU from the fleet."""
    ids: list[str] = []
    latencies: list[float] = []
    errors = 0
    remaining = iter(range(n))

    async def submitter() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": KEY}, timeout=60,
                                     limits=httpx.Limits(max_connections=1)) as client:
            for _ in remaining:
                t = time.perf_counter()
                try:
                    r = await client.post("/v4/jobs", content=BODY_BYTES,
                                          headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    errors += 1
                    continue
                if r.status_code != 202:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
                ids.append(r.json()["id"])

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    return ids, latencies, time.perf_counter() - start, errors


def wait_jobs(redis, ids: list[str], timeout: float = 600.0, batch: int = 1000) -> list[tuple[str, float, float]]:
    """(status, created_at, finished_at) of every job, once all have ended."""
    done: dict[str, tuple[str, float, float]] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        still = []
        for i in range(0, len(pending), batch):
            chunk = pending[i:i + batch]
            with redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hmget(keys.job(job_id), "status", "created_at", "finished_at")
                rows = pipe.execute()
            for job_id, (status, created, finished) in zip(chunk, rows):
                if status in ("succeeded", "failed", "cancelled") and finished:
                    done[job_id] = (status, float(created), float(finished))
                else:
                    still.append(job_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} jobs not finished after {timeout:g} s")
            time.sleep(0.5)  # the figures come from the jobs' own timestamps, not from this loop
    return [done[i] for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--send-threads", type=int, default=8, help="threads sending the bare pings")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="provider worker processes (200 slots each)")
    parser.add_argument("--rabbitmq", action="store_true",
                        help="RabbitMQ as Celery's broker (a node of its own), Redis the state store only")
    parser.add_argument("--state-cluster", action="store_true",
                        help="the state store on a Redis Cluster of three masters (the broker stays one Redis)")
    args = parser.parse_args()

    stack = BenchStack(fake_knobs={"ttft_ms": 0, "tokens_per_s": 0, "record_limit": 0}, rabbitmq=args.rabbitmq,
                       state_cluster=args.state_cluster)
    try:
        workers = ["interactive"] + [f"interactive{n}" for n in range(2, args.workers + 1)]
        for name in workers:
            stack.start_worker(200, name=name)
        stack.start_api()
        stack.wait_ready()
        # The Celery app reads its broker from the settings at import: point it at this stack's.
        os.environ["CHATFLEET_REDIS_URL"] = stack.redis_url
        if args.rabbitmq:
            os.environ["CHATFLEET_BROKER_URL"] = stack.broker_url
        from shared.connections import sync_redis
        from worker.celery_app import app

        if app.conf.broker_url != stack.broker_url:
            raise RuntimeError(f"the Celery app was configured for {app.conf.broker_url}, not {stack.broker_url}")
        redis = sync_redis(stack.redis_url)  # the bare pings' counter
        state = sync_redis(stack.state_url) if stack.state_url != stack.redis_url else redis
        cluster = sorted(name for name in stack.fleet.procs if name.startswith("cluster-"))
        pids = {"api": stack.pid("api"),
                **{name.replace("interactive", "worker"): stack.pid(f"worker-{name}") for name in workers},
                "redis": stack.pid("redis"), **({"rabbitmq": stack.pid("rabbitmq")} if args.rabbitmq else {}),
                **{name: stack.pid(name) for name in cluster},
                "fake": stack.fake.proc.pid, "bench": os.getpid()}

        counter = "chatfleet:bench:pings"
        bare_pings(redis, app, args.warmup, args.send_threads, counter)
        window = CpuWindow(pids)
        bare = bare_pings(redis, app, args.pings, args.send_threads, counter)
        bare_cpu = window.stop()

        run_async(submit_jobs(stack.base_url, args.warmup, args.submitters))
        time.sleep(1.0)  # let the warm-up jobs finish
        window.start()
        ids, submit_lat, submit_wall, submit_errors = run_async(
            submit_jobs(stack.base_url, args.jobs, args.submitters))
        jobs = wait_jobs(state, ids)
        fleet_cpu = window.stop()
        fleet_wall = time.monotonic() - window.t0
        redis.close()
        if state is not redis:
            state.close()
    finally:
        stack.close()

    first_created = min(j[1] for j in jobs)
    last_finished = max(j[2] for j in jobs)
    fleet_rate = len(jobs) / (last_finished - first_created)
    bare_rate = bare["n"] / bare["wall"]
    statuses = {s: sum(1 for j in jobs if j[0] == s) for s in {j[0] for j in jobs}}
    job_latency = [j[2] - j[1] for j in jobs]
    broker = ("RabbitMQ broker" if args.rabbitmq else "Redis broker") + (
        " + Redis Cluster state store (3 masters)" if args.state_cluster
        else " + Redis state store" if args.rabbitmq else " and state store in one Redis")
    print(f"\nJobs per second, {broker}, one API process + {args.workers} worker process(es) (200 slots each), "
          f"{MODEL}, 8 tokens, fake provider at zero latency, {os.cpu_count()} cores")
    rows = [
        ["bare Celery task (chatfleet.ping, INCR)", str(bare["n"]), f"{bare_rate:.0f}", "",
         f"{bare['n'] / bare['sent']:.0f} sent/s ({args.send_threads} threads)", ""],
        ["fleet job (POST /v4/jobs → succeeded)", str(len(jobs)), f"{fleet_rate:.0f}",
         f"{fleet_rate / bare_rate:.2f}",
         (f"{len(ids) / submit_wall:.0f} submitted/s ({args.submitters} submitters, 202 p50 "
          f"{percentile(submit_lat, 50) * 1000:.1f} ms, p99 {percentile(submit_lat, 99) * 1000:.1f} ms)"),
         f"{percentile(job_latency, 50) * 1000:.0f} / {percentile(job_latency, 99) * 1000:.0f}"],
    ]
    print(table(["what", "n", "per s", "fleet/bare", "sending", "created→finished p50/p99 ms"], rows,
                left_first=True))
    print(f"fleet jobs: {statuses}; submit errors: {submit_errors}")
    names = list(fleet_cpu)
    print("\nCPU per job or ping, ms, by process (\"others\": processes outside the benchmark; "
          "machine = all cores busy x wall / n):")
    print(table(["what", *names], [
        ["bare", *(f"{bare_cpu[k] * bare['wall'] / bare['n'] * 1000:.2f}" for k in names)],
        ["fleet", *(f"{fleet_cpu[k] * fleet_wall / len(jobs) * 1000:.2f}" for k in names)],
    ], left_first=True))
    print("cores busy: bare " + ", ".join(f"{k} {v:.2f}" for k, v in bare_cpu.items())
          + "; fleet " + ", ".join(f"{k} {v:.2f}" for k, v in fleet_cpu.items()))

if __name__ == "__main__":
    main()
