"""Every Redis key and channel the fleet uses, named once, Celery's and kombu's included.

The Celery broker's keys are kombu's Redis transport's: a list per queue (named as the queue),
and the unacknowledged-message hash, index and mutex, whose names ``worker.celery_app`` passes
to kombu from here, so that the reaper (``worker/queue/recovery.py``) reads the keys kombu
writes.
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "chatfleet"


def _family(template: str) -> Callable[[str], str]:
    """The keys of one family: ``template`` under the prefix, ``{}`` standing for the id."""
    def key(id_: str) -> str:
        return f"{PREFIX}:{template.format(id_)}"
    return key

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

# Hash: the job record (status, request, result, timestamps, attempts).
job = _family("job:{}")

# Stream: every event of the job, ids ``0-1``, ``0-2``, ... (backs replay and resume).
job_events = _family("job:{}:events")

# Pub/sub channel: the same events, live, for subscribers that are already listening.
job_channel = _family("job:{}:live")

# String: present once cancellation of the job was requested.
job_cancel = _family("job:{}:cancel")

# String with a TTL: the token of the worker attempt that currently runs the job.
job_lease = _family("job:{}:lease")

# Sorted set: running job ids scored by the time their lease lapses (for the lease reaper).
RUNNING_JOBS = f"{PREFIX}:jobs:running"

# --- accounts and API keys -------------------------------------------------------------------------

ACCOUNTS = f"{PREFIX}:accounts"  # set of account ids

# Hash: the account (name, limits).
account = _family("account:{}")

# Sorted set: the account's job ids scored by creation time.
account_jobs = _family("account:{}:jobs")

# Hash: the account's API keys, key id -> digest.
account_api_keys = _family("account:{}:keys")

# Hash: an API key by the SHA-256 of its secret (account id, key id, created_at).
api_key = _family("apikey:{}")

# String: the digest of the key with this id (for listing and revocation).
api_key_id = _family("apikey-id:{}")

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


# Sorted set: the account's throttled jobs, scored by submission time (admission order).
account_waiting = _family("account:{}:waiting")

# Sorted set: accounts with waiting jobs, scored by when (unix ms) to try the first one again.
THROTTLED_ACCOUNTS = f"{PREFIX}:throttled"

def deployment_health(deployment: str, bucket: str) -> str:
    """Hash: a deployment's calls and failures in one window (``bucket``: its start / window)."""
    return f"{PREFIX}:dep:{deployment}:health:{bucket}"


# String with a TTL: the deployment is cooling down (calls go to the model's others first).
deployment_cooldown = _family("dep:{}:cooldown")

# --- usage -----------------------------------------------------------------------------------------

USAGE_ACCOUNTS = f"{PREFIX}:usage:accounts"  # set: accounts that have usage


def usage_day(account_id: str, day: str) -> str:
    """Hash: the account's usage on ``day`` (YYYY-MM-DD, UTC), fields ``{model}|{counter}``."""
    return f"{PREFIX}:usage:{account_id}:{day}"


# Sorted set: the days the account has usage for (member YYYY-MM-DD, score YYYYMMDD).
usage_days = _family("usage:{}:days")

# --- batches ---------------------------------------------------------------------------------------

# Hash: the batch (status, timestamps, counters total/completed/failed, metadata, errors).
batch = _family("batch:{}")

# List: lines not yet handed to the queue, as prepared job specs (JSON).
batch_pending = _family("batch:{}:pending")

# Set: job ids of the lines already handed to the queue.
batch_jobs = _family("batch:{}:jobs")

# List: one JSONL line per succeeded request.
batch_results = _family("batch:{}:results")

# List: one JSONL line per failed, cancelled or expired request.
batch_errors = _family("batch:{}:errors")

# Sorted set: the account's batch ids by creation time.
account_batches = _family("account:{}:batches")

# Sorted set: batches with lines still to feed or to finish, by creation time.
ACTIVE_BATCHES = f"{PREFIX}:batches:active"
# Counter: batch jobs handed to the queue and not finished yet, fleet-wide.
BATCH_IN_FLIGHT = f"{PREFIX}:batches:in-flight"

# --- files (the OpenAI front door's uploads, and its batches' output files) ----------------------------

# Hash: a file (account, filename, purpose, bytes, times; an output file: its batch and kind).
file = _family("file:{}")
# List: an uploaded file's content, in chunks of bytes.
file_content = _family("file:{}:content")
# Sorted set: the account's files by creation time.
account_files = _family("account:{}:files")

# --- workers and their fleet-wide services -----------------------------------------------------------

# Sorted set: worker hostnames scored by their last heartbeat (unix seconds).
WORKERS = f"{PREFIX}:workers"

# Hash: what a worker consumes and when it last reported.
worker = _family("worker:{}")

# String with a TTL: held by the one worker that runs ``service``'s pass at a time
# (``reaper``, ``scheduler``, ``batch-feeder``).
lock = _family("lock:{}")

REAPER_LOCK = lock("reaper")
SCHEDULER_LOCK = lock("scheduler")
BATCH_FEEDER_LOCK = lock("batch-feeder")
