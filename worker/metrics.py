"""Each worker process's Prometheus metrics (README, "Metrics"), served on its own port
(``CHATFLEET_WORKER_METRICS_PORT``, by ``start_worker_metrics_server``).

Labels are bounded by construction: model ids of the catalog, provider families, error codes,
queue names, outcomes. Never an account, a job id, a key, or any message text.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import keys
from shared.metrics import FAST_BUCKETS, process_registry

log = logging.getLogger(__name__)

REGISTRY = process_registry()

# Seconds: from a tenth of a second up to the 10-minute job time limit.
_SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


JOBS_FINISHED = Counter(
    "chatfleet_jobs_finished",
    "Jobs finished by a worker, by final status (succeeded, failed, cancelled), model and provider family.",
    ["status", "model", "provider"], registry=REGISTRY,
)
JOB_ATTEMPT_DURATION = Histogram(
    "chatfleet_job_attempt_duration_seconds",
    "Duration of one attempt at a job in a worker (claim to finish, park or hand-back), by outcome.",
    ["outcome"], buckets=_SLOW_BUCKETS, registry=REGISTRY,
)
JOBS_RUNNING = Gauge(
    "chatfleet_jobs_running",
    "Jobs this worker process is running now (admitted, calling their provider).",
    registry=REGISTRY,
)
RATELIMIT_ADMISSIONS = Counter(
    "chatfleet_ratelimit_admissions",
    "Jobs admitted by the rate limiter, by model.",
    ["model"], registry=REGISTRY,
)
RATELIMIT_REJECTIONS = Counter(
    "chatfleet_ratelimit_rejections",
    "Jobs not admitted by the rate limiter, by model and reason (requests, tokens, concurrency: "
    "the job waits; order: it waits behind earlier jobs of its account; too_large: it fails).",
    ["model", "reason"], registry=REGISTRY,
)
PROVIDER_CALL_DURATION = Histogram(
    "chatfleet_provider_call_duration_seconds",
    "Duration of one provider call (the whole streamed answer), by provider family, model and "
    "outcome (ok, error, aborted: cancelled, lost or timed out).",
    ["provider", "model", "outcome"], buckets=_SLOW_BUCKETS, registry=REGISTRY,
)
PROVIDER_TTFT = Histogram(
    "chatfleet_provider_time_to_first_token_seconds",
    "Time from the start of a provider call to its first text, by provider family and model.",
    ["provider", "model"], buckets=FAST_BUCKETS, registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "chatfleet_provider_errors",
    "Failed provider calls (retried or not), by provider family and error code.",
    ["provider", "code"], registry=REGISTRY,
)
TOKENS = Counter(
    "chatfleet_tokens",
    "Tokens of finished jobs as recorded in usage, by model, provider family and direction "
    "(in: prompt, out: completion).",
    ["model", "provider", "direction"], registry=REGISTRY,
)


def admission_reason(outcome: str, reason: str) -> str:
    """The label of a rate-limit rejection, from the limiter's outcome and its reason text."""
    if outcome == "too_large":
        return "too_large"
    if reason.startswith("waiting behind"):
        return "order"
    for word, label in (("requests", "requests"), ("tokens", "tokens"), ("concurrency", "concurrency")):
        if word in reason:
            return label
    return "other"


def record_admission(model: str, outcome: str, reason: str = "") -> None:
    if outcome == "admitted":
        RATELIMIT_ADMISSIONS.labels(model).inc()
    else:
        RATELIMIT_REJECTIONS.labels(model, admission_reason(outcome, reason)).inc()


def record_finish(status: str, model: str, provider: str, usage=None) -> None:
    JOBS_FINISHED.labels(status, model, provider).inc()
    if usage is not None:
        TOKENS.labels(model, provider, "in").inc(max(int(usage.prompt_tokens), 0))
        TOKENS.labels(model, provider, "out").inc(max(int(usage.completion_tokens), 0))


class RedisGauges(Collector):
    """Fleet-wide gauges read at scrape time: queue depths (``LLEN`` of each Celery queue, or
    RabbitMQ's count of its messages ready) and throttled jobs waiting for admission (``ZCARD`` of
    each throttled account's waiting set). Every worker reports the same values: aggregate with ``max``."""

    QUEUES = keys.QUEUES
    MAX_ACCOUNTS = 1000
    MIN_INTERVAL = 1.0  # seconds: scrapes closer together reuse the last reading

    def __init__(self, broker_url: str, state_url: str | None = None):
        from shared.connections import sync_redis

        def client(url: str):
            return sync_redis(url, socket_timeout=2, socket_connect_timeout=2)

        from shared.settings import AMQP_SCHEMES

        self._amqp = broker_url if broker_url.split("://", 1)[0].lower() in AMQP_SCHEMES else None
        self._broker = None if self._amqp else client(broker_url)  # the queues
        self._redis = client(state_url) if state_url and state_url != broker_url else self._broker
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._reading: tuple[dict[str, int], int] | None = None

    def _amqp_depths(self) -> dict[str, int]:
        """Messages ready on each queue, as RabbitMQ counts them (a passive declare)."""
        from kombu import Connection

        with Connection(self._amqp, connect_timeout=2,
                        transport_options={"read_timeout": 2, "write_timeout": 2}) as connection:
            out = {}
            for queue in self.QUEUES:
                channel = connection.channel()
                try:
                    out[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except connection.channel_errors:  # not declared yet: nothing on it
                    out[queue] = 0
            return out

    def describe(self):
        return [GaugeMetricFamily("chatfleet_queue_depth", "", labels=["queue"]),
                GaugeMetricFamily("chatfleet_throttled_jobs_waiting", "")]

    def _read(self) -> tuple[dict[str, int], int] | None:
        with self._lock:
            if self._reading is not None and time.monotonic() - self._read_at < self.MIN_INTERVAL:
                return self._reading
            try:
                if self._amqp:
                    depths = self._amqp_depths()
                    lengths = [depths[queue] for queue in self.QUEUES]
                else:
                    assert self._broker is not None  # a Redis broker: its client
                    pipe = self._broker.pipeline(transaction=False)
                    for queue in self.QUEUES:
                        pipe.llen(queue)
                    lengths = pipe.execute()
                assert self._redis is not None  # the state store's client (on RabbitMQ, its own URL's)
                pipe = self._redis.pipeline(transaction=False)
                for shard in range(keys.ACCOUNT_SHARDS):
                    pipe.zrange(keys.throttled_accounts(shard), 0, self.MAX_ACCOUNTS // keys.ACCOUNT_SHARDS - 1)
                accounts = [a for found in pipe.execute() for a in found]
                waiting = 0
                if accounts:
                    pipe = self._redis.pipeline(transaction=False)
                    for account_id in accounts:
                        pipe.zcard(keys.account_waiting(account_id))
                    waiting = sum(int(n) for n in pipe.execute())
                self._reading = (dict(zip(self.QUEUES, (int(n) for n in lengths))), waiting)
            except Exception as exc:  # noqa: BLE001 - a scrape never fails for a reading
                log.warning("could not read queue depths for metrics: %s", exc)
                self._reading = None
            self._read_at = time.monotonic()
            return self._reading

    def collect(self):
        depth = GaugeMetricFamily("chatfleet_queue_depth",
                                  "Jobs waiting in each Celery queue (LLEN), fleet-wide.", labels=["queue"])
        waiting = GaugeMetricFamily("chatfleet_throttled_jobs_waiting",
                                    "Jobs parked by the rate limiter, waiting for admission, fleet-wide.")
        reading = self._read()
        if reading is not None:
            lengths, parked = reading
            for queue, length in lengths.items():
                depth.add_metric([queue], length)
            waiting.add_metric([], parked)
        yield depth
        yield waiting


_server_lock = threading.Lock()
_server: tuple[int, int] | None = None  # (pid, port)
PORT_ATTEMPTS = 21  # the configured port and the next 20


def start_worker_metrics_server(settings=None) -> int | None:
    """Serve this worker process's metrics over HTTP; returns the port (None: disabled or
    failed). Several workers on one machine: a busy port moves on to the next, up to +20.
    Never raises: metrics must not stop a worker."""
    global _server
    try:
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        base = settings.worker_metrics_port
        if not base:
            return None
        with _server_lock:
            if _server is not None and _server[0] == os.getpid():
                return _server[1]
            for port in range(base, base + PORT_ATTEMPTS):
                try:
                    start_http_server(port, addr=settings.worker_metrics_host, registry=REGISTRY)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    log.warning("worker metrics port %d is in use; trying %d", port, port + 1)
                    continue
                try:
                    REGISTRY.register(RedisGauges(settings.broker, settings.state_url))
                except ValueError:  # already registered (a second call in this process)
                    pass
                _server = (os.getpid(), port)
                log.info("worker metrics served on port %d", port, extra={"port": port})
                return port
            log.warning("worker metrics disabled: ports %d to %d are all in use", base, base + PORT_ATTEMPTS - 1)
            return None
    except Exception:
        log.warning("could not start the worker metrics server", exc_info=True)
        return None


def serving_port() -> int | None:
    """The port this process's metrics are served on, None when they are not."""
    server = _server
    return server[1] if server is not None and server[0] == os.getpid() else None


def record_provider_call(provider: str, model: str, outcome: str, seconds: float, code: str | None = None) -> None:
    PROVIDER_CALL_DURATION.labels(provider, model, outcome).observe(seconds)
    if code is not None:
        PROVIDER_ERRORS.labels(provider, code).inc()
