"""Every Redis key and channel the fleet uses, named once.

Celery's own keys (queue lists, ``unacked``, ``_kombu.*``) live beside these under the names
of the queues below.
"""

from __future__ import annotations

PREFIX = "chatfleet"

# Celery queues (Redis lists of the same name).
QUEUE_INTERACTIVE = "chatfleet.interactive"
QUEUE_LOCAL = "chatfleet.local"

# Name of the one Celery task; it carries only the job id.
RUN_JOB_TASK = "chatfleet.run_job"


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


def account_jobs(account_id: str) -> str:
    """Sorted set: the account's job ids scored by creation time."""
    return f"{PREFIX}:account:{account_id}:jobs"


def account(account_id: str) -> str:
    """Hash: the account (name, limits)."""
    return f"{PREFIX}:account:{account_id}"


ACCOUNTS = f"{PREFIX}:accounts"  # set of account ids


def api_key(key_hash: str) -> str:
    """Hash: an API key by the SHA-256 of its secret (account id, key id, created_at)."""
    return f"{PREFIX}:apikey:{key_hash}"


# Sorted set: running job ids scored by the time their lease lapses (for the lease reaper).
RUNNING_JOBS = f"{PREFIX}:jobs:running"
# Lock held by the one worker that sweeps lapsed leases at a time.
REAPER_LOCK = f"{PREFIX}:lock:reaper"
# Sorted set: worker hostnames scored by their last heartbeat (unix seconds).
WORKERS = f"{PREFIX}:workers"


def worker(hostname: str) -> str:
    """Hash: what a worker consumes and when it last reported."""
    return f"{PREFIX}:worker:{hostname}"


def rate(scope: str, part: str) -> str:
    """Rate-limit state of a scope (``acct:{id}``, ``acct:{id}:model:{m}``, ``dep:{name}``):
    ``req`` zset of admissions, ``tok`` hash of their tokens, ``total`` their sum, ``conc`` zset
    of concurrency leases."""
    return f"{PREFIX}:rl:{scope}:{part}"


def account_waiting(account_id: str) -> str:
    """Sorted set: the account's throttled jobs, scored by submission time (admission order)."""
    return f"{PREFIX}:account:{account_id}:waiting"


# Sorted set: accounts with waiting jobs, scored by when (unix ms) to try the first one again.
THROTTLED_ACCOUNTS = f"{PREFIX}:throttled"
# Lock held by the one worker that releases throttled jobs at a time.
SCHEDULER_LOCK = f"{PREFIX}:lock:scheduler"


def api_key_id(key_id: str) -> str:
    """String: the digest of the key with this id (for listing and revocation)."""
    return f"{PREFIX}:apikey-id:{key_id}"


def usage_day(account_id: str, day: str) -> str:
    """Hash: the account's usage on ``day`` (YYYY-MM-DD, UTC), fields ``{model}|{counter}``."""
    return f"{PREFIX}:usage:{account_id}:{day}"


def usage_days(account_id: str) -> str:
    """Sorted set: the days the account has usage for (member YYYY-MM-DD, score YYYYMMDD)."""
    return f"{PREFIX}:usage:{account_id}:days"
USAGE_ACCOUNTS = f"{PREFIX}:usage:accounts"  # set: accounts that have usage

QUEUE_BATCH = "chatfleet.batch"


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


# Sorted set: jobs waiting in a queue (member job id, score when queued). Each such job's hash
# keeps its queue message (field ``message``) until a worker claims it, so that the reaper can
# tell a message still queued or held by a worker from one lost on its way (see requeue_lost).
QUEUED_JOBS = f"{PREFIX}:jobs:queued"

# Sorted set: batches with lines still to feed or to finish, by creation time.
ACTIVE_BATCHES = f"{PREFIX}:batches:active"
# Counter: batch jobs handed to the queue and not finished yet, fleet-wide.
BATCH_IN_FLIGHT = f"{PREFIX}:batches:in-flight"
# Lock held by the one worker that feeds batches at a time.
BATCH_FEEDER_LOCK = f"{PREFIX}:lock:batch-feeder"
