"""Local model throughput: SmolLM2 through the whole fleet vs xllamacpp called directly.

    .venv/bin/python -m bench.local_model [--tokens 200] [--rounds 3]

Both sides use the same GGUF, the same llama.cpp settings (slots = concurrency, threads =
cores) and the same greedy, EOS-ignoring generation of a fixed number of tokens, one after
the other on the same machine. Prints completion tokens per second and the ratio.
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

from bench._stack import CpuWindow, table
from deploy.devstack import Fleet, api_argv, free_port, start_redis, wait_ready, worker_argv
from shared import keys
from shared.catalog import get_catalog
from shared.prompts import render_template
from shared.settings import Settings

MODEL = "smollm2-135m-instruct"
BENCH_CATALOG = Path(__file__).with_name("catalog.toml")
KEY = "cf-bench-key"
QUESTION = "Write a long story about a lighthouse keeper."


def direct(concurrency: int, tokens: int, rounds: int) -> tuple[float, dict[str, float]]:
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
    server = xllamacpp.Server(params)
    spec = get_catalog().get(MODEL)
    prompt = render_template(spec.template, [{"role": "user", "content": QUESTION}], spec)
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}

    def one(_):
        n = 0

        def on_chunk(chunk):
            nonlocal n
            n = (chunk.get("usage") or {}).get("completion_tokens", n)
            return False

        server.handle_completions(body, on_chunk)
        return n

    rates = []
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up
        window = CpuWindow({"bench": os.getpid()})
        for _ in range(rounds):
            start = time.perf_counter()
            produced = sum(pool.map(one, range(concurrency)))
            rates.append(produced / (time.perf_counter() - start))
        cores = window.stop()
    server = None  # free the model before the fleet loads its own
    return statistics.median(rates), cores


def through_fleet(concurrency: int, tokens: int, rounds: int) -> tuple[float, dict[str, float]]:
    fleet = Fleet()
    tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
    try:
        redis_url = start_redis(fleet, free_port(), tmp / "redis", tmp / "log")
        env = {**os.environ, "CHATFLEET_REDIS_URL": redis_url, "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
               "CHATFLEET_DEV_API_KEY": KEY, "CHATFLEET_CATALOG_PATH": str(BENCH_CATALOG),
               "CHATFLEET_LOCAL_MODEL_SLOTS": str(concurrency), "CHATFLEET_LOCAL_MODEL_CONTEXT": "2048"}
        port = free_port()
        fleet.spawn("worker-local", worker_argv("local", [keys.QUEUE_LOCAL], concurrency), env, tmp / "log")
        fleet.spawn("api", api_argv("127.0.0.1", port), env, tmp / "log")
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, [keys.QUEUE_LOCAL], fleet=fleet)
        body = {"model": "smollm2-bench", "messages": [{"role": "user", "content": QUESTION}],
                "model_parameters": {"max_tokens": tokens, "temperature": 0}}
        client = httpx.Client(base_url=base, headers={"x-api-key": KEY}, timeout=300,
                              limits=httpx.Limits(max_connections=concurrency * 2))
        lock = threading.Lock()

        def one(_):
            r = client.post("/v4/chat-completions", json=body)
            r.raise_for_status()
            with lock:
                return r.json()["token_usage"]["completion"]

        rates = []
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency)))  # warm-up (loads the model)
            window = CpuWindow({"worker": fleet.procs["worker-local"].pid, "api": fleet.procs["api"].pid,
                                "redis": fleet.procs["redis"].pid, "bench": os.getpid()})
            for _ in range(rounds):
                start = time.perf_counter()
                produced = sum(pool.map(one, range(concurrency)))
                rates.append(produced / (time.perf_counter() - start))
            cores = window.stop()
        client.close()
        return statistics.median(rates), cores
    finally:
        fleet.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    rows = []
    usage = []
    for c in args.concurrency:
        d, d_cores = direct(c, args.tokens, args.rounds)
        f, f_cores = through_fleet(c, args.tokens, args.rounds)
        rows.append((c, d, f))
        usage.append([str(c), "direct", "", f"{d_cores['bench']:.2f}", "", "", "", f"{d_cores['machine']:.2f}",
                      f"{d_cores['others']:.2f}"])
        usage.append([str(c), "fleet", f"{f_cores['worker']:.2f}", f"{f_cores['bench']:.2f}", f"{f_cores['api']:.2f}",
                      f"{f_cores['redis']:.2f}", f"{f_cores['api'] + f_cores['redis'] + f_cores['bench']:.2f}",
                      f"{f_cores['machine']:.2f}", f"{f_cores['others']:.2f}"])
    print(f"\nSmolLM2-135M-Instruct Q4_1, {args.tokens} tokens per request, median of {args.rounds} rounds, "
          f"{os.cpu_count()} cores")
    print(f"{'concurrent':>10} | {'direct tok/s':>12} | {'fleet tok/s':>11} | {'fleet/direct':>12}")
    print(f"{'-' * 10}-+-{'-' * 12}-+-{'-' * 11}-+-{'-' * 12}")
    for c, d, f in rows:
        print(f"{c:>10} | {d:>12.1f} | {f:>11.1f} | {f / d:>12.2f}")
    print("\nCores busy per process while measuring (the worker and the direct side include llama.cpp's "
          "threads; \"others\": processes outside the benchmark):")
    print(table(["concurrent", "side", "worker", "bench", "api", "redis", "api+redis+bench", "machine", "others"],
                usage))
    if len(rows) > 1:
        print(f"fleet scaling, {rows[-1][0]} concurrent vs 1: {rows[-1][2] / rows[0][2]:.2f}x "
              f"(direct: {rows[-1][1] / rows[0][1]:.2f}x)")


if __name__ == "__main__":
    main()
