"""The Celery application, configured for at-least-once delivery on Redis (or RabbitMQ).

- acks late + prefetch 1: a worker takes no more messages than it has slots, and acknowledges
  each once its job has ended (RabbitMQ then drops it; a dead worker's come back at once);
- on Redis, no ack emulation: a worker holds the messages it took in memory only, as kombu
  does with ``ack_emulation`` off, rather than in kombu's unacked hash and index (two
  transactions per message, a fifth of a provider worker's CPU, bench/README.md). What
  kombu's record did, the job's own record in the state store does: a job is queued, in a
  shard's queued index, before its message is pushed, and claimed under a lease once a worker
  starts it; the reaper queues again a job whose lease lapsed (its worker died running it) or
  that stays queued with its message on no list (its worker died holding the message,
  ``worker/queue/recovery.py``). A message is given back to its list when its job is handed
  back (``Reject``) and at a warm shutdown, as before. kombu's visibility timeout, which
  redelivered a still-running job's message after an hour, is gone with it;
- reject on worker lost: a job whose pool process died goes back to the queue;
- the job id is the task id and the only argument: Flower shows ids, never content;
- our own redelivery cap (``CHATFLEET_MAX_DELIVERIES``), since Celery has none;
- kombu's Redis transport with one client per channel (``worker/queue/broker.py``);
- task events only while a monitor wants them: Flower turns them on in every worker while it
  runs (``CHATFLEET_WORKER_TASK_EVENTS`` sends them always), since publishing three events per
  job nobody reads costs about a tenth of a provider worker's CPU.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery, signals
from kombu import Queue

from shared import keys
from shared.logs import configure_logging
from shared.settings import get_settings

settings = get_settings()


def _flower_credentials() -> None:
    """Flower shows every worker and task: it never runs without credentials."""
    if "flower" not in sys.argv[1:]:
        return
    if settings.flower_basic_auth and not os.environ.get("FLOWER_BASIC_AUTH"):
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not all(":" in pair and pair.split(":", 1)[0] and pair.split(":", 1)[1] for pair in auth.split(",")):
        sys.exit("Flower refuses to start without credentials: set CHATFLEET_FLOWER_BASIC_AUTH=user:password")


_flower_credentials()

app = Celery("chatfleet", broker=settings.broker, include=["worker.tasks"])
_transport: dict[str, Any]
if settings.broker_is_amqp:
    # RabbitMQ: kombu's own AMQP transport. It redelivers a dead worker's unacknowledged
    # messages itself; its consumer timeout must stay above the job time limit (README).
    _transport = {"confirm_publish": True}
else:
    app.conf.broker_transport = "worker.queue.broker:Transport"
    # The unacknowledged-message keys stay named (shared/keys.py): the reaper still reads what a
    # worker of an earlier version may have left there.
    _transport = {"ack_emulation": False, "visibility_timeout": settings.visibility_timeout,
                  "unacked_key": keys.UNACKED, "unacked_index_key": keys.UNACKED_INDEX,
                  "unacked_mutex_key": keys.UNACKED_MUTEX}
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    broker_transport_options=_transport,
    result_backend_transport_options=_transport,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    task_queues=[Queue(name) for name in keys.QUEUES],
    task_default_queue=keys.QUEUE_INTERACTIVE,
    task_routes={keys.RUN_JOB_TASK: {"queue": keys.QUEUE_INTERACTIVE}},
    worker_send_task_events=settings.worker_task_events,
    task_send_sent_event=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    worker_concurrency=settings.worker_concurrency,
    worker_pool="worker.queue.pool:TaskPool",
    enable_utc=True,
)


@signals.setup_logging.connect
def _setup_logging(**_):
    """Celery leaves logging to us: JSON (or text) lines, CHATFLEET_LOG_LEVEL, secrets masked."""
    configure_logging(settings)
