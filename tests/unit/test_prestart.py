"""A worker starts its pool's threads ahead (worker/tasks.py), but never waits on a busy pool."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from worker.tasks import _prestart_threads


def test_a_fresh_pool_gets_all_its_threads():
    executor = ThreadPoolExecutor(max_workers=12)
    try:
        _prestart_threads(SimpleNamespace(executor=executor, limit=12))
        assert len(executor._threads) == 12
        # and they are idle: twelve jobs run at once without a new thread
        gate = threading.Barrier(13)
        for _ in range(12):
            executor.submit(gate.wait, 5)
        gate.wait(5)
        assert len(executor._threads) == 12
    finally:
        executor.shutdown()


def test_a_pool_already_running_a_job_is_left_alone():
    executor = ThreadPoolExecutor(max_workers=4)
    release = threading.Event()
    try:
        executor.submit(release.wait, 10)  # a job holds one thread
        started = time.monotonic()
        _prestart_threads(SimpleNamespace(executor=executor, limit=4))
        assert time.monotonic() - started < 1  # no wait on a barrier the busy thread holds
        assert len(executor._threads) == 1
    finally:
        release.set()
        executor.shutdown()

