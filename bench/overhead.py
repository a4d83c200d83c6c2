"""Latency the fleet adds to a synchronous chat completion, vs calling the provider directly.

    .venv/bin/python -m bench.overhead [--requests 1000] [--warmup 50] [--concurrency 1 10 50] [--shared-client]

Both sides talk to the same fake provider at zero latency (ttft 0, tokens as fast as possible),
8 tokens per answer:

- direct: ``POST {fake}/v1/chat/completions`` with the body the OpenAI adapter sends
  (``stream: true``, ``stream_options.include_usage``, seed, temperature, max_tokens), reading
  the whole SSE stream;
- fleet: ``POST /v4/chat-completions`` (model gpt-4o-mini, max_tokens 8, not streamed) through
  one API process and one provider worker process (200 slots) on a fresh Redis, dev account
  (no limits).

At each concurrency, N requests after a warm-up, from asyncio (uvloop), each caller with its own
httpx.AsyncClient and keep-alive connection, on both sides. (With one AsyncClient per side for
all callers, ``--shared-client``, httpx's connection pool scans every connection and waiting
request on each request: at 50 callers the benchmark process alone then needs ~4 ms of CPU per
request and tops out near 300 requests/s, which measures httpx, not the fleet.) Prints p50/p95/p99
of each side, of the added latency (fleet - direct, percentile by percentile), requests per
second, and the cores each process used (including "others": processes outside the benchmark,
which on a shared machine disturb the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import httpx
import orjson

from bench._stack import KEY, BenchStack, CpuWindow, percentile, run_async, table

MODEL = "gpt-4o-mini"
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "Say eight words about lighthouses."}]


async def run_level(call, clients: list[httpx.AsyncClient], requests: int,
                    warmup: int) -> tuple[list[float], float, int]:
    """Latencies (s) of ``requests`` calls made by ``len(clients)`` concurrent callers (caller k
    uses ``clients[k]``), the wall time, errors."""

    async def drive(count: int, out: list[float] | None) -> int:
        remaining = iter(range(count))
        errors = 0

        async def caller(client: httpx.AsyncClient) -> None:
            nonlocal errors
            for _ in remaining:
                start = time.perf_counter()
                try:
                    await call(client)
                except (httpx.HTTPError, ValueError, RuntimeError):
                    errors += 1
                    continue
                if out is not None:
                    out.append(time.perf_counter() - start)

        await asyncio.gather(*(caller(c) for c in clients))
        return errors

    await drive(max(warmup, len(clients)), None)
    latencies: list[float] = []
    start = time.perf_counter()
    errors = await drive(requests, latencies)
    return latencies, time.perf_counter() - start, errors


def make_clients(n: int, shared: bool, **kwargs) -> list[httpx.AsyncClient]:
    """``n`` callers' clients: one client each with one connection, or one shared client."""
    if shared:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10),
                                   timeout=60, **kwargs)
        return [client] * n
    return [httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60, **kwargs) for _ in range(n)]


async def close_clients(clients: list[httpx.AsyncClient]) -> None:
    for client in set(clients):
        await client.aclose()


async def measure(base_url: str, fake_url: str, levels: list[int], requests: int, warmup: int,
                  pids: dict[str, int], shared: bool) -> list[dict]:
    direct_body = orjson.dumps({
        "model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True},
        "seed": 12345, "temperature": 0.2, "max_tokens": MAX_TOKENS,
    })
    fleet_body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "model_parameters": {"max_tokens": MAX_TOKENS}})
    json_type = {"content-type": "application/json"}

    async def direct(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", content=direct_body, headers=json_type) as r:
            if r.status_code != 200:
                raise RuntimeError(f"direct: HTTP {r.status_code}")
            done = False
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"usage":{' in line:
                    done = True
            if not done:
                raise RuntimeError("direct: no usage chunk")

    async def fleet(client: httpx.AsyncClient) -> None:
        r = await client.post("/v4/chat-completions", content=fleet_body, headers=json_type)
        if r.status_code != 200 or r.json()["token_usage"]["completion"] != MAX_TOKENS:
            raise RuntimeError(f"fleet: HTTP {r.status_code} {r.text[:200]}")

    results = []
    for c in levels:
        direct_clients = make_clients(c, shared, base_url=fake_url, headers={"authorization": "Bearer sk-bench"})
        fleet_clients = make_clients(c, shared, base_url=base_url, headers={"x-api-key": KEY})
        try:
            window = CpuWindow(pids)
            d_lat, d_wall, d_err = await run_level(direct, direct_clients, requests, warmup)
            d_cpu = window.stop()
            window.start()
            f_lat, f_wall, f_err = await run_level(fleet, fleet_clients, requests, warmup)
            f_cpu = window.stop()
        finally:
            await close_clients(direct_clients)
            await close_clients(fleet_clients)
        results.append({"c": c, "direct": d_lat, "d_wall": d_wall, "d_err": d_err, "d_cpu": d_cpu,
                        "fleet": f_lat, "f_wall": f_wall, "f_err": f_err, "f_cpu": f_cpu})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per level and side")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests per level and side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--shared-client", action="store_true",
                        help="one httpx.AsyncClient per side for all callers (httpx's pool then costs "
                             "the benchmark ~4 ms CPU per request at 50 callers)")
    args = parser.parse_args()

    stack = BenchStack(fake_knobs={"ttft_ms": 0, "tokens_per_s": 0, "record_limit": 0})
    try:
        stack.start_worker(200)
        stack.start_api()
        stack.wait_ready()
        pids = {"api": stack.pid("api"), "worker": stack.pid("worker-interactive"), "redis": stack.pid("redis"),
                "fake": stack.fake.proc.pid, "bench": os.getpid()}
        results = run_async(measure(stack.base_url, stack.fake.base_url, args.concurrency, args.requests,
                                 args.warmup, pids, args.shared_client))
    finally:
        stack.close()

    def ms(v: float) -> str:
        return f"{v * 1000:.2f}"

    rows = []
    for r in results:
        d, f = r["direct"], r["fleet"]
        dp = [percentile(d, p) for p in (50, 95, 99)]
        fp = [percentile(f, p) for p in (50, 95, 99)]
        d_rps, f_rps = len(d) / r["d_wall"], len(f) / r["f_wall"]
        rows.append([str(r["c"]), *map(ms, dp), *map(ms, fp), *(ms(b - a) for a, b in zip(dp, fp)),
                     f"{d_rps:.0f}", f"{f_rps:.0f}", f"{f_rps / d_rps:.3f}",
                     str(r["d_err"] + r["f_err"])])
    print(f"\nSynchronous chat completion, {MODEL}, {MAX_TOKENS} tokens, fake provider at zero latency, "
          f"{args.requests} requests per level after {args.warmup} warm-up, {os.cpu_count()} cores; "
          "latencies in ms")
    print(table(["clients", "direct p50", "p95", "p99", "fleet p50", "p95", "p99",
                 "added p50", "p95", "p99", "direct req/s", "fleet req/s", "fleet/direct", "errors"], rows))
    print("\nCores busy per process during each side's run (warm-up included; \"others\": processes "
          "outside the benchmark):")
    names = list(results[0]["f_cpu"]) if results else []
    print(table(["clients", "side", *names],
                [[str(r["c"]), side, *(f"{r[key][k]:.2f}" for k in names)]
                 for r in results for side, key in (("direct", "d_cpu"), ("fleet", "f_cpu"))]))

if __name__ == "__main__":
    main()
