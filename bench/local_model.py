"""Local model throughput: SmolLM2 through the whole fleet vs xllamacpp called directly.

    .venv/bin/python -m bench.local_model [--tokens 200] [--rounds 5] [--concurrency 1 4]

Both sides use the same GGUF, the same llama.cpp settings (slots = concurrency, threads =
cores) and the same greedy, EOS-ignoring generation of a fixed number of tokens. The rounds
alternate (direct, fleet, direct, fleet, ...) so that both sides see the same machine: on a
shared 2-core machine llama.cpp's speed drifts by 10-20 % from one minute to the next, more
than the difference being measured. Prints the median tokens per second of each side, the
median of the per-round ratios, and the cores each process used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from api.prompts import render_template
from bench._stack import CpuWindow, table
from deploy.devstack import (
    Fleet,
    api_argv,
    free_port,
    start_redis,
    wait_ready,
    worker_argv,
)
from shared import keys
from shared.catalog import get_catalog
from shared.settings import Settings

MODEL = "smollm2-135m-instruct"
BENCH_CATALOG = Path(__file__).with_name("catalog.toml")
KEY = "cf-bench-key"
QUESTION = "Write a long story about a lighthouse keeper."


class Direct:
    """xllamacpp in this process, driven like the fleet's local worker drives it."""

    def __init__(self, concurrency: int, tokens: int):
        import xllamacpp

        settings = Settings()
        params = xllamacpp.CommonParams()
        params.model.path = settings.local_model_path
        params.n_parallel = concurrency
        params.n_ctx = 2048 * concurrency
        threads = os.cpu_count() or 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        self.server = xllamacpp.Server(params)
        spec = get_catalog().get(MODEL)
        prompt = render_template(spec.template, [{"role": "user", "content": QUESTION}], spec)
        self.body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}

    def one(self, _) -> int:
        n = 0

        def on_chunk(chunk):
            nonlocal n
            n = (chunk.get("usage") or {}).get("completion_tokens", n)
            return False

        self.server.handle_completions(self.body, on_chunk)
        return n


class ThroughFleet:
    """Redis, the API and a local-model worker; requests are synchronous chat completions."""

    def __init__(self, concurrency: int, tokens: int):
        self.fleet = Fleet()
        tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
        try:
            redis_url = start_redis(self.fleet, free_port(), tmp / "redis", tmp / "log")
            env = {**os.environ, "CHATFLEET_REDIS_URL": redis_url, "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
                   "CHATFLEET_DEV_API_KEY": KEY, "CHATFLEET_CATALOG_PATH": str(BENCH_CATALOG),
                   "CHATFLEET_LOCAL_MODEL_SLOTS": str(concurrency), "CHATFLEET_LOCAL_MODEL_CONTEXT": "2048",
                   "CHATFLEET_LOG_LEVEL": "WARNING"}
            port = free_port()
            self.fleet.spawn("worker-local", worker_argv("local", [keys.QUEUE_LOCAL], concurrency), env, tmp / "log")
            self.fleet.spawn("api", api_argv("127.0.0.1", port), env, tmp / "log")
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, [keys.QUEUE_LOCAL], fleet=self.fleet)
        except BaseException:
            self.fleet.stop_all()
            raise
        self.body = {"model": "smollm2-bench", "messages": [{"role": "user", "content": QUESTION}],
                     "model_parameters": {"max_tokens": tokens, "temperature": 0}}
        self.client = httpx.Client(base_url=base, headers={"x-api-key": KEY}, timeout=300,
                                   limits=httpx.Limits(max_connections=concurrency * 2))
        self.lock = threading.Lock()

    def pids(self) -> dict[str, int]:
        return {name: self.fleet.procs[proc].pid for name, proc in
                (("worker", "worker-local"), ("api", "api"), ("redis", "redis"))}

    def one(self, _) -> int:
        r = self.client.post("/v4/chat-completions", json=self.body)
        r.raise_for_status()
        with self.lock:
            return r.json()["token_usage"]["completion"]

    def close(self) -> None:
        self.client.close()
        self.fleet.stop_all()


def round_rate(pool: ThreadPoolExecutor, one, concurrency: int) -> float:
    start = time.perf_counter()
    produced = sum(pool.map(one, range(concurrency)))
    return produced / (time.perf_counter() - start)


def measure(concurrency: int, tokens: int, rounds: int) -> dict:
    direct = Direct(concurrency, tokens)
    fleet = ThroughFleet(concurrency, tokens)
    try:
        rates: dict[str, list[float]] = {"direct": [], "fleet": []}
        cpu = {"direct": 0.0, "fleet": 0.0}
        cores: dict[str, dict[str, float]] = {}
        with ThreadPoolExecutor(concurrency) as pool:
            for side in (direct, fleet):
                list(pool.map(side.one, range(concurrency)))  # warm-up (the fleet loads its model)
            for _ in range(rounds):
                for name, side, pids in (("direct", direct, {"bench": os.getpid()}),
                                         ("fleet", fleet, {**fleet.pids(), "bench": os.getpid()})):
                    window = CpuWindow(pids)
                    t = time.perf_counter()
                    rates[name].append(round_rate(pool, side.one, concurrency))
                    elapsed = time.perf_counter() - t
                    used = window.stop()
                    cpu[name] += elapsed
                    for k, v in used.items():  # accumulate core-seconds, averaged below
                        cores.setdefault(name, {}).setdefault(k, 0.0)
                        cores[name][k] += v * elapsed
        cores = {name: {k: v / cpu[name] for k, v in used.items()} for name, used in cores.items()}
        ratios = [f / d for d, f in zip(rates["direct"], rates["fleet"])]
        return {"direct": statistics.median(rates["direct"]), "fleet": statistics.median(rates["fleet"]),
                "ratio": statistics.median(ratios), "ratios": ratios, "cores": cores}
    finally:
        fleet.close()
        direct.server = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = {c: measure(c, args.tokens, args.rounds) for c in args.concurrency}
    print(f"\nSmolLM2-135M-Instruct Q4_1, {args.tokens} tokens per request, {args.rounds} alternating rounds "
          f"per side, {os.cpu_count()} cores")
    print(table(["concurrent", "direct tok/s", "fleet tok/s", "fleet/direct (median of rounds)", "per round"],
                [[str(c), f"{r['direct']:.1f}", f"{r['fleet']:.1f}", f"{r['ratio']:.2f}",
                  " ".join(f"{x:.2f}" for x in r["ratios"])] for c, r in results.items()]))
    usage = []
    for c, r in results.items():
        d, f = r["cores"]["direct"], r["cores"]["fleet"]
        usage.append([str(c), "direct", "", f"{d['bench']:.2f}", "", "", f"{d['machine']:.2f}", f"{d['others']:.2f}"])
        usage.append([str(c), "fleet", f"{f['worker']:.2f}", f"{f['bench']:.2f}", f"{f['api']:.2f}",
                      f"{f['redis']:.2f}", f"{f['machine']:.2f}", f"{f['others']:.2f}"])
    print("\nCores busy per process while measuring (the worker and the direct side include llama.cpp's "
          "threads; \"others\": processes outside the benchmark):")
    print(table(["concurrent", "side", "worker", "bench", "api", "redis", "machine", "others"], usage))
    if len(results) > 1:
        first, last = results[args.concurrency[0]], results[args.concurrency[-1]]
        print(f"fleet scaling, {args.concurrency[-1]} concurrent vs {args.concurrency[0]}: "
              f"{last['fleet'] / first['fleet']:.2f}x (direct: {last['direct'] / first['direct']:.2f}x)")


if __name__ == "__main__":
    main()
