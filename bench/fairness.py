"""Interactive requests during a large batch on the same model: latency against idle, in one run.

    .venv/bin/python -m bench.fairness [--lines 1000] [--requests 10] [--tokens 16] [--slots 2]

One fleet (Redis, the API, one local-model worker with ``--slots`` slots) on the zero-key local
model. First ``--requests`` synchronous chat completions one after another on an idle fleet;
then a ``--lines``-line batch of the same model is submitted (each line ``--tokens`` tokens,
as the requests), and the same requests are made again while it runs; then the batch is
cancelled. Prints each side's latency (p50, max), their ratio, how many lines ran meanwhile,
and the most lines ever waiting on the local queue (``chatfleet.local``), where an interactive
request would queue behind them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from bench._stack import table
from deploy.devstack import Fleet, api_argv, free_port, start_redis, wait_ready, worker_argv
from shared import keys

MODEL = "smollm2-135m-instruct"
KEY = "cf-bench-key"


class LocalFleet:
    def __init__(self, slots: int):
        self.fleet = Fleet()
        tmp = Path(tempfile.mkdtemp(prefix="chatfleet-bench-"))
        try:
            self.redis_url = start_redis(self.fleet, free_port(), tmp / "redis", tmp / "log")
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHATFLEET_")},
                   "CHATFLEET_REDIS_URL": self.redis_url, "CHATFLEET_BOOTSTRAP_DEV_ACCOUNT": "true",
                   "CHATFLEET_DEV_API_KEY": KEY, "CHATFLEET_DATA_DIR": str(tmp),
                   "CHATFLEET_LOCAL_MODEL_SLOTS": str(slots), "CHATFLEET_LOG_LEVEL": "WARNING"}
            port = free_port()
            self.fleet.spawn("worker-local", worker_argv("local", [keys.QUEUE_LOCAL], slots), env, tmp / "log")
            self.fleet.spawn("api", api_argv("127.0.0.1", port), env, tmp / "log")
            self.base = f"http://127.0.0.1:{port}"
            wait_ready(self.base, [keys.QUEUE_LOCAL], fleet=self.fleet)
        except BaseException:
            self.fleet.stop_all()
            raise
        self.client = httpx.Client(base_url=self.base, headers={"x-api-key": KEY}, timeout=900)

    def close(self) -> None:
        self.client.close()
        self.fleet.stop_all()


def body(tokens: int, n: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Say something about rivers ({n})."}],
            "model_parameters": {"max_tokens": tokens, "temperature": 0}}


def latencies(fleet: LocalFleet, requests: int, tokens: int) -> list[float]:
    out = []
    for n in range(requests):
        t = time.perf_counter()
        r = fleet.client.post("/v4/chat-completions", json=body(tokens, n))
        r.raise_for_status()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    fleet = LocalFleet(args.slots)
    try:
        latencies(fleet, 2, args.tokens)  # warm-up
        idle = latencies(fleet, args.requests, args.tokens)
        lines = [{"custom_id": f"l{i}", "url": "/v4/chat-completions", "body": body(args.tokens, 1000 + i)}
                 for i in range(args.lines)]
        batch = fleet.client.post("/v4/batches", json={"requests": lines})
        batch.raise_for_status()
        batch_id = batch.json()["id"]
        broker = redis.Redis.from_url(fleet.redis_url)
        most_queued = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal most_queued
            while not stop.is_set():
                most_queued = max(most_queued, broker.llen(keys.QUEUE_LOCAL))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while fleet.client.get(f"/v4/batches/{batch_id}").json()["request_counts"]["completed"] < 1:
            time.sleep(0.1)
        started = fleet.client.get(f"/v4/batches/{batch_id}").json()["request_counts"]["completed"]
        during = latencies(fleet, args.requests, args.tokens)
        ran = fleet.client.get(f"/v4/batches/{batch_id}").json()["request_counts"]["completed"] - started
        stop.set()
        watcher.join()
        fleet.client.post(f"/v4/batches/{batch_id}/cancel")
    finally:
        fleet.close()
    p50_idle, p50_during = statistics.median(idle), statistics.median(during)
    print(f"\nInteractive requests on {MODEL} ({args.tokens} tokens, one at a time, {args.requests} per side) "
          f"idle and during a {args.lines}-line batch of the same model; {args.slots} local slots, "
          f"{os.cpu_count()} cores")
    print(table(["side", "p50 s", "max s", "batch lines run meanwhile", "most lines queued on chatfleet.local"],
                [["idle", f"{p50_idle:.2f}", f"{max(idle):.2f}", "", ""],
                 ["during the batch", f"{p50_during:.2f}", f"{max(during):.2f}", str(ran), str(most_queued)]]))
    print(f"during/idle p50: {p50_during / p50_idle:.2f}")


if __name__ == "__main__":
    main()
