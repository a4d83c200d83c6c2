"""What the API's metrics (``api/metrics.py``) and each worker's (``worker/metrics.py``) have in
common: a registry of their own with the process's standard metrics, no ``*_created`` series,
and the buckets of sub-second to minute latencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# No *_created series: they double the samples and nothing here reads them. (Untyped in
# prometheus_client: it takes nothing and returns nothing.)
cast(Callable[[], None], disable_created_metrics)()

# Seconds: from sub-second answers up to a minute.
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def process_registry() -> CollectorRegistry:
    """A registry with the ``process_*`` and ``python_*`` metrics of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
