"""The fleet side by side with the LiteLLM proxy, in front of the same fake provider, in one run.

    .venv/bin/python -m bench.peers [--requests 500] [--rounds 3] [--concurrency 1 50]

The fake provider answers at once (8 tokens, no latency). Three sides take the same requests,
OpenAI's wire format on all of them (the fleet through its OpenAI front door, `/v1`):

- direct: the fake provider itself (the floor);
- LiteLLM: its proxy (`litellm[proxy]`, installed in `var/bench-env`, an environment of its own),
  one process, routing `gpt-4o-mini` to the fake;
- Portkey: the stateless gateway `@portkey-ai/gateway` (installed with npm in `var/bench-node`),
  one Node process, told the provider and its host in each request's headers;
- fleet: the API, one provider worker and Redis.

For each of sync and streaming, at each concurrency, the sides take turns for ``--rounds``
rounds of ``--requests`` requests (each caller on a connection of its own). Printed: requests/s,
p50/p99 latency and what each side adds over direct, CPU per request of each side's processes
(LiteLLM's process tree; the fleet's API, worker and Redis). The last lines are the fleet/LiteLLM and
fleet/Portkey ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from bench._stack import KEY, BenchStack, bench_tool, percentile, run_async, table
from deploy.devstack import Fleet, free_port

MODEL = "gpt-4o-mini"
LITELLM_KEY = "sk-bench-litellm-0123456789abcdef0123456789abcdef"
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "Say eight words about lighthouses."}]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def start_litellm(fleet: Fleet, fake_url: str, log_dir: Path) -> str:
    exe = bench_tool("litellm", "litellm[proxy]")
    port = free_port()
    config = log_dir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {fake_url}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n")  # it authenticates each request, as the fleet does
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true"}
    fleet.spawn("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                            "--num_workers", "1"], env, log_dir)
    return serving(fleet, "litellm", f"http://127.0.0.1:{port}", "/health/liveliness", 120)


def serving(fleet: Fleet, name: str, url: str, path: str, timeout: float) -> str:
    """``url`` once the peer process ``name`` answers 200 on ``path``; its log's tail if it exits
    or stays silent ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if fleet.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n{fleet.tail(name)}")
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not start:\n{fleet.tail(name)}")


PORTKEY = "@portkey-ai/gateway@1.15.2"
BENCH_NODE = Path(__file__).resolve().parents[1] / "var" / "bench-node"


def start_portkey(fleet: Fleet, log_dir: Path) -> str:
    script = BENCH_NODE / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not script.exists():
        subprocess.run(["npm", "install", "--prefix", str(BENCH_NODE), "--no-audit", "--no-fund", "--silent", PORTKEY],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    fleet.spawn("portkey", ["node", str(script), f"--port={port}", "--headless"], dict(os.environ), log_dir)
    return serving(fleet, "portkey", f"http://127.0.0.1:{port}", "/", 60)


async def call(client: httpx.AsyncClient, stream: bool) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0.2}
    if stream:
        body["stream"] = True
        async with client.stream("POST", "/v1/chat/completions", content=orjson.dumps(body),
                                 headers={"content-type": "application/json"}) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    return
        raise RuntimeError("no [DONE]")
    r = await client.post("/v1/chat/completions", content=orjson.dumps(body),
                          headers={"content-type": "application/json"})
    if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != MAX_TOKENS:
        raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")


async def level(url: str, headers: dict[str, str], callers: int, requests: int,
                stream: bool) -> tuple[list[float], float, int]:
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=1))
               for _ in range(callers)]
    latencies: list[float] = []
    errors = 0
    try:
        async def drive(count: int, out: list[float] | None) -> None:
            nonlocal errors
            remaining = iter(range(count))

            async def caller(client):
                nonlocal errors
                for _ in remaining:
                    t = time.perf_counter()
                    try:
                        await call(client, stream)
                    except (httpx.HTTPError, RuntimeError, ValueError, KeyError):
                        errors += 1
                        continue
                    if out is not None:
                        out.append(time.perf_counter() - t)

            await asyncio.gather(*(caller(c) for c in clients))

        await drive(max(callers * 2, 20), None)  # warm-up
        errors = 0
        start = time.perf_counter()
        await drive(requests, latencies)
        return latencies, time.perf_counter() - start, errors
    finally:
        for c in clients:
            await c.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()

    stack = BenchStack(fake_knobs={"ttft_ms": 0, "tokens_per_s": 0, "record_limit": 0})
    try:
        stack.start_worker(200)
        stack.start_api()
        stack.wait_ready()
        litellm_url = start_litellm(stack.fleet, stack.fake.base_url, stack.log_dir)
        portkey_url = start_portkey(stack.fleet, stack.log_dir)
        sides = {
            "direct": (stack.fake.base_url, {"authorization": "Bearer sk-bench"}, [stack.fake.proc.pid]),
            "LiteLLM": (litellm_url, {"authorization": f"Bearer {LITELLM_KEY}"}, [stack.pid("litellm")]),
            "Portkey": (portkey_url, {"authorization": "Bearer sk-bench", "x-portkey-provider": "openai",
                                      "x-portkey-custom-host": f"{stack.fake.base_url}/v1"}, [stack.pid("portkey")]),
            "fleet": (stack.base_url, {"authorization": f"Bearer {KEY}"},
                      [stack.pid("api"), stack.pid("worker-interactive"), stack.pid("redis")]),
        }
        results: dict[tuple, dict] = {}
        for stream in (False, True):
            for callers in args.concurrency:
                for _ in range(args.rounds):
                    for side, (url, headers, pids) in sides.items():
                        cpu0 = sum(tree_cpu_seconds(p) for p in pids)
                        lat, wall, err = run_async(level(url, headers, callers, args.requests, stream))
                        cpu = sum(tree_cpu_seconds(p) for p in pids) - cpu0
                        r = results.setdefault((stream, callers, side), {"lat": [], "wall": 0.0, "n": 0, "err": 0,
                                                                          "cpu": 0.0})
                        r["lat"] += lat
                        r["wall"] += wall
                        r["n"] += len(lat)
                        r["err"] += err
                        r["cpu"] += cpu
    finally:
        stack.close()

    rows: list[list[str]] = []
    ratios: dict[str, list[str]] = {}
    for stream in (False, True):
        for callers in args.concurrency:
            d = results[(stream, callers, "direct")]
            dp50, dp99 = percentile(d["lat"], 50), percentile(d["lat"], 99)
            per_side = {}
            for side in ("direct", "LiteLLM", "Portkey", "fleet"):
                r = results[(stream, callers, side)]
                p50, p99 = percentile(r["lat"], 50), percentile(r["lat"], 99)
                rps = r["n"] / r["wall"] if r["wall"] else 0
                per_side[side] = (rps, p50 - dp50, r["cpu"] / max(r["n"], 1))
                rows.append(["stream" if stream else "sync", str(callers), side, f"{rps:.0f}", f"{p50 * 1000:.2f}",
                             f"{p99 * 1000:.2f}", "" if side == "direct" else f"{(p50 - dp50) * 1000:.2f}",
                             "" if side == "direct" else f"{(p99 - dp99) * 1000:.2f}",
                             f"{r['cpu'] / max(r['n'], 1) * 1000:.2f}", str(r["err"])])
            fleet_rps, fleet_added, fleet_cpu = per_side["fleet"]
            for peer in ("LiteLLM", "Portkey"):
                peer_rps, peer_added, peer_cpu = per_side[peer]
                rps_ratio = fleet_rps / peer_rps if peer_rps else float("nan")
                ratios.setdefault(peer, []).append(
                    f"{'stream' if stream else 'sync'} x{callers}: req/s {rps_ratio:.2f}, "
                    f"added p50 {fleet_added / peer_added if peer_added > 0 else float('nan'):.2f}, "
                    f"CPU/request {fleet_cpu / peer_cpu if peer_cpu > 0 else float('nan'):.2f}")
    print(f"\nOpenAI chat completions, {MODEL}, {MAX_TOKENS} tokens, fake provider at zero latency, "
          f"{args.rounds} alternating rounds of {args.requests} requests per side, {os.cpu_count()} cores")
    print(table(["mode", "clients", "side", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
                 "CPU ms/request", "errors"], rows))
    for peer, line in ratios.items():
        print(f"fleet/{peer}: " + "; ".join(line))


if __name__ == "__main__":
    main()
