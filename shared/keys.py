"""Every Redis key and channel the fleet uses, named once, Celery's and kombu's included.

The Celery broker's keys are kombu's Redis transport's: a list per queue (named as the queue),
and the unacknowledged-message hash, index and mutex, whose names ``worker.celery_app`` passes
to kombu from here, so that the reaper (``worker/queue/recovery.py``) reads the keys kombu
writes.
"""

from __future__ import annotations

PREFIX = "chatfleet"

# --- the queue: Celery's queues, its one task, and kombu's bookkeeping -------------------------

QUEUE_INTERACTIVE = "chatfleet.interactive"
QUEUE_BATCH = "chatfleet.batch"
QUEUE_LOCAL = "chatfleet.local"
QUEUES = (QUEUE_INTERACTIVE, QUEUE_BATCH, QUEUE_LOCAL)

# Name of the one Celery task; it carries only the job id.
RUN_JOB_TASK = "chatfleet.run_job"

# kombu's Redis transport: delivered, unacknowledged messages (hash: delivery tag -> message),
# their index (sorted set: delivery tag -> delivery time) and the lock of its restore pass.
# These are kombu's defaults; they are set explicitly in the transport options.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
UNACKED_MUTEX = "unacked_mutex"

# Sorted set: jobs waiting in a queue (member job id, score when queued). Each such job's hash
# keeps its queue message (field ``message``) until a worker claims it, so that the reaper can
# tell a message still queued or held by a worker from one lost on its way (see requeue_lost).
QUEUED_JOBS = f"{PREFIX}:jobs:queued"

# --- jobs ----------------------------------------------------------------------------------------


def job(job_id: str) -> str:
    """Hash: the job record (status, request, result, timestamps, attempts)."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream: every event of the job, ids ``0-1``, ``0-2``, ... (backs replay and resume)."""
    return f"{PREFIX}:job:{job_id}:events"


def job_channel(job_id: str) -> str:
    """Pub/sub channel: the same events, live, for subscribers that are already listening."""
    return f"{PREFIX}:job:{job_id}:live"


def job_cancel(job_id: str) -> str:
    """String: present once cancellation of the job was requested."""
    return f"{PREFIX}:job:{job_id}:cancel"


def job_lease(job_id: str) -> str:
    """String with a TTL: the token of the worker attempt that currently runs the job."""
    return f"{PREFIX}:job:{job_id}:lease"


# Sorted set: running job ids scored by the time their lease lapses (for the lease reaper).
RUNNING_JOBS = f"{PREFIX}:jobs:running"

# --- accounts and API keys -------------------------------------------------------------------------

ACCOUNTS = f"{PREFIX}:accounts"  # set of account ids


def account(account_id: str) -> str:
    """Hash: the account (name, limits)."""
    return f"{PREFIX}:account:{account_id}"


def account_jobs(account_id: str) -> str:
    """Sorted set: the account's job ids scored by creation time."""
    return f"{PREFIX}:account:{account_id}:jobs"


def account_api_keys(account_id: str) -> str:
    """Hash: the account's API keys, key id -> digest."""
    return f"{PREFIX}:account:{account_id}:keys"


def api_key(key_hash: str) -> str:
    """Hash: an API key by the SHA-256 of its secret (account id, key id, created_at)."""
    return f"{PREFIX}:apikey:{key_hash}"


def api_key_id(key_id: str) -> str:
    """String: the digest of the key with this id (for listing and revocation)."""
    return f"{PREFIX}:apikey-id:{key_id}"


# --- rate limits -----------------------------------------------------------------------------------

RATE_PARTS = ("req", "tok", "total", "conc")


def rate(scope: str, part: str) -> str:
    """Rate-limit state of a scope (``acct:{id}``, ``acct:{id}:model:{m}``, ``dep:{name}``):
    ``req`` zset of admissions, ``tok`` hash of their tokens, ``total`` their sum, ``conc`` zset
    of concurrency leases."""
    return f"{PREFIX}:rl:{scope}:{part}"


def account_rate(account_id: str) -> list[str]:
    """The account scope's keys, in ``RATE_PARTS`` order."""
    return [rate(f"acct:{account_id}", part) for part in RATE_PARTS]


def rate_scopes(account_id: str, model: str, deployment: str) -> list[str]:
    """The 12 keys of the three scopes a job is admitted in (account, account x model,
    deployment), each in ``RATE_PARTS`` order."""
    return [rate(scope, part)
            for scope in (f"acct:{account_id}", f"acct:{account_id}:model:{model}", f"dep:{deployment}")
            for part in RATE_PARTS]


def account_waiting(account_id: str) -> str:
    """Sorted set: the account's throttled jobs, scored by submission time (admission order)."""
    return f"{PREFIX}:account:{account_id}:waiting"


# Sorted set: accounts with waiting jobs, scored by when (unix ms) to try the first one again.
THROTTLED_ACCOUNTS = f"{PREFIX}:throttled"

# --- usage -----------------------------------------------------------------------------------------

USAGE_ACCOUNTS = f"{PREFIX}:usage:accounts"  # set: accounts that have usage


def usage_day(account_id: str, day: str) -> str:
    """Hash: the account's usage on ``day`` (YYYY-MM-DD, UTC), fields ``{model}|{counter}``."""
    return f"{PREFIX}:usage:{account_id}:{day}"


def usage_days(account_id: str) -> str:
    """Sorted set: the days the account has usage for (member YYYY-MM-DD, score YYYYMMDD)."""
    return f"{PREFIX}:usage:{account_id}:days"


# --- batches ---------------------------------------------------------------------------------------


def batch(batch_id: str) -> str:
    """Hash: the batch (status, timestamps, counters total/completed/failed, metadata, errors)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_pending(batch_id: str) -> str:
    """List: lines not yet handed to the queue, as prepared job specs (JSON)."""
    return f"{PREFIX}:batch:{batch_id}:pending"


def batch_jobs(batch_id: str) -> str:
    """Set: job ids of the lines already handed to the queue."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_results(batch_id: str) -> str:
    """List: one JSONL line per succeeded request."""
    return f"{PREFIX}:batch:{batch_id}:results"


def batch_errors(batch_id: str) -> str:
    """List: one JSONL line per failed, cancelled or expired request."""
    return f"{PREFIX}:batch:{batch_id}:errors"


def account_batches(account_id: str) -> str:
    """Sorted set: the account's batch ids by creation time."""
    return f"{PREFIX}:account:{account_id}:batches"


# Sorted set: batches with lines still to feed or to finish, by creation time.
ACTIVE_BATCHES = f"{PREFIX}:batches:active"
# Counter: batch jobs handed to the queue and not finished yet, fleet-wide.
BATCH_IN_FLIGHT = f"{PREFIX}:batches:in-flight"

# --- workers and their fleet-wide services -----------------------------------------------------------

# Sorted set: worker hostnames scored by their last heartbeat (unix seconds).
WORKERS = f"{PREFIX}:workers"


def worker(hostname: str) -> str:
    """Hash: what a worker consumes and when it last reported."""
    return f"{PREFIX}:worker:{hostname}"


def lock(service: str) -> str:
    """String with a TTL: held by the one worker that runs ``service``'s pass at a time
    (``reaper``, ``scheduler``, ``batch-feeder``)."""
    return f"{PREFIX}:lock:{service}"


REAPER_LOCK = lock("reaper")
SCHEDULER_LOCK = lock("scheduler")
BATCH_FEEDER_LOCK = lock("batch-feeder")
