"""The API's Prometheus metrics (README, "Metrics"): their definitions, a pure ASGI middleware
timing every request, ``GET /metrics``, and the decorator that counts open SSE streams.

Labels are bounded by construction: route templates, status codes, model ids of the catalog.
Never an account, a job id, a key, or any message text. Each worker process has metrics of its
own (``worker/metrics.py``).
"""

from __future__ import annotations

import functools
import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from shared.metrics import FAST_BUCKETS, process_registry

REGISTRY = process_registry()

HTTP_REQUEST_DURATION = Histogram(
    "chatfleet_http_request_duration_seconds",
    "API request latency until the response starts (for streams: time to the first byte), "
    "by method, route template and status code.",
    ["method", "route", "status"], buckets=FAST_BUCKETS, registry=REGISTRY,
)
SSE_STREAMS_ACTIVE = Gauge(
    "chatfleet_sse_streams_active",
    "Server-sent event streams the API is serving now, by route template.",
    ["route"], registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "chatfleet_jobs_submitted",
    "Jobs accepted by the API (POST /v4/jobs and /v4/chat-completions), by model.",
    ["model"], registry=REGISTRY,
)

UNMATCHED = "unmatched"  # no route: never the raw path (unbounded, and may carry ids)


def route_template(scope, mounts: tuple[str, ...] = ()) -> str:
    """The template of the route that served the request, as the client calls it: a router's
    template under its door's mount (``/v1/chat/completions``); a route without parameters
    (``/docs``, ``/openapi.json``) by its path; ``unmatched`` otherwise."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        for mount in mounts:  # the longest first
            if scope.get("path", "").startswith(mount + "/") and not path.startswith(mount + "/"):
                return mount + path
        return path
    if "endpoint" in scope and not scope.get("path_params"):
        return scope.get("path") or UNMATCHED  # a static route: its path is its template
    return UNMATCHED


class MetricsMiddleware:
    """Observes each HTTP request when its response starts (status known): for a streamed
    response that is its time to first byte, and the stream itself passes through untouched.
    A request that fails before answering counts as a 500."""

    def __init__(self, app, mounts: tuple[str, ...] = ()):
        self.app = app
        self.mounts = tuple(sorted((m for m in mounts if m), key=len, reverse=True))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            HTTP_REQUEST_DURATION.labels(scope.get("method", ""), route_template(scope, self.mounts),
                                                 str(status)).observe(time.perf_counter() - started)

        async def send_observed(message):
            if not observed and message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except BaseException:
            if not observed:
                observe(500)
            raise


async def metrics_endpoint() -> Response:
    """``GET /metrics``: the API process's metrics, in the Prometheus text format (no auth)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def track_sse(route: str):
    """Decorates an async generator function (an SSE body): counts the stream in
    ``chatfleet_sse_streams_active`` from its first item until it ends, however it ends
    (the wrapped generator is closed at the same moment, so its own ``finally`` still runs)."""

    def decorate(generator_function):
        @functools.wraps(generator_function)
        async def tracked(*args, **kwargs):
            inner = generator_function(*args, **kwargs)
            gauge = SSE_STREAMS_ACTIVE.labels(route)
            gauge.inc()
            try:
                async for item in inner:
                    yield item
            finally:
                try:
                    await inner.aclose()
                finally:
                    gauge.dec()

        return tracked

    return decorate
