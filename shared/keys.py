"""Every Redis key and channel the fleet uses, named once, Celery's and kombu's included.

The Celery broker's keys are kombu's Redis transport's: a list per queue (named as the queue),
and the unacknowledged-message hash, index and mutex, whose names ``worker.celery_app`` passes
to kombu from here, so that the reaper (``worker/queue/recovery.py``) reads the keys kombu
writes.

The state store's keys are laid out for Redis Cluster: every script's keys share one hash slot
(the part of a key between its first ``{`` and ``}``, its hash tag, decides the slot).

- A job's keys, and the fleet-wide indexes a job's scripts touch with them (running and queued
  jobs, usage counters, a batch and its lines), carry the tag of the job's *shard*: one of
  ``SHARDS``, from the job id. The indexes are one per shard; whoever reads them reads every
  shard. A batch's lines are jobs of the batch's shard.
- An account's limits, its waiting line and the index of throttled accounts carry the tag of the
  account's shard (one of ``ACCOUNT_SHARDS``).
- A provider deployment's limits and health carry a tag of their own.
- Keys only ever used alone (API keys, files, workers, locks) carry none.

The shards' tags are chosen so that their slots are spread evenly over the 16,384 (a cluster
that splits the slots evenly gives each master its share of the shards).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "chatfleet"

SHARDS = 16  # job shards
ACCOUNT_SHARDS = 16


def _spread_tags(prefix: str, n: int) -> tuple[str, ...]:
    """``n`` hash tags, the i-th the first ``{prefix}{i}.{k}`` whose slot is in the i-th of ``n``
    equal ranges of slots. Fixed forever: they are in the keys' names."""
    tags = []
    for i in range(n):
        low, high = i * REDIS_CLUSTER_HASH_SLOTS // n, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // n
        k = 0
        while not low <= key_slot(f"{prefix}{i}.{k}".encode()) < high:
            k += 1
        tags.append(f"{prefix}{i}.{k}")
    return tuple(tags)


SHARD_TAGS = _spread_tags("s", SHARDS)
ACCOUNT_SHARD_TAGS = _spread_tags("a", ACCOUNT_SHARDS)


def shard_of(id_: str) -> int:
    """The shard of a job or batch id: its last two hex digits (ids end in random hex, and a
    batch's lines are given its shard's), else a CRC of it."""
    try:
        return int(id_[-2:], 16) % SHARDS
    except ValueError:
        return zlib.crc32(id_.encode()) % SHARDS


def account_shard(account_id: str) -> int:
    return zlib.crc32(account_id.encode()) % ACCOUNT_SHARDS


def shard_tag(shard: int) -> str:
    return "{" + SHARD_TAGS[shard] + "}"


def _account_tag(account_id: str) -> str:
    return "{" + ACCOUNT_SHARD_TAGS[account_shard(account_id)] + "}"


def _family(template: str) -> Callable[[str], str]:
    """The keys of one family: ``template`` under the prefix, ``{}`` standing for the id."""
    def key(id_: str) -> str:
        return f"{PREFIX}:{template.format(id_)}"
    return key


def _sharded(template: str) -> Callable[[str], str]:
    """A family of keys in the shard of their id (a job's, a batch's)."""
    def key(id_: str) -> str:
        return f"{PREFIX}:{shard_tag(shard_of(id_))}:{template.format(id_)}"
    return key


def _by_account(template: str) -> Callable[[str], str]:
    """A family of keys in their account's shard."""
    def key(account_id: str) -> str:
        return f"{PREFIX}:{_account_tag(account_id)}:{template.format(account_id)}"
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

def queued_jobs(shard: int) -> str:
    """Sorted set: the shard's jobs waiting in a queue (member job id, score when queued). Each
    such job's hash keeps its queue message (field ``message``) until a worker claims it, so that
    the reaper can tell a message still queued or held by a worker from one lost on its way (see
    requeue_lost)."""
    return f"{PREFIX}:{shard_tag(shard)}:jobs:queued"


def queued_of(job_id: str) -> str:
    return queued_jobs(shard_of(job_id))

# --- jobs ----------------------------------------------------------------------------------------

# Hash: the job record (status, request, result, timestamps, attempts).
job = _sharded("job:{}")

# Stream: every event of the job, ids ``0-1``, ``0-2``, ... (backs replay and resume).
job_events = _sharded("job:{}:events")

# Pub/sub channel: the same events, live, for subscribers that are already listening.
job_channel = _sharded("job:{}:live")

# String: present once cancellation of the job was requested.
job_cancel = _sharded("job:{}:cancel")

# String with a TTL: the token of the worker attempt that currently runs the job.
job_lease = _sharded("job:{}:lease")


def running_jobs(shard: int) -> str:
    """Sorted set: the shard's running job ids scored by the time their lease lapses (for the
    lease reaper)."""
    return f"{PREFIX}:{shard_tag(shard)}:jobs:running"


def running_of(job_id: str) -> str:
    return running_jobs(shard_of(job_id))

# --- accounts and API keys -------------------------------------------------------------------------

ACCOUNTS = f"{PREFIX}:accounts"  # set of account ids

# Hash: the account (name, limits).
account = _by_account("account:{}")

def account_jobs(account_id: str, shard: int) -> str:
    """Sorted set: the account's job ids in the shard, scored by creation time (the account's
    jobs: every shard's)."""
    return f"{PREFIX}:{shard_tag(shard)}:account:{account_id}:jobs"

# Hash: the account's API keys, key id -> digest.
account_api_keys = _family("account:{}:keys")

# Hash: an API key by the SHA-256 of its secret (account id, key id, created_at).
api_key = _family("apikey:{}")

# String: the digest of the key with this id (for listing and revocation).
api_key_id = _family("apikey-id:{}")

# --- rate limits -----------------------------------------------------------------------------------

RATE_PARTS = ("req", "tok", "total", "conc")


def _deployment_tag(deployment: str) -> str:
    return "{d:" + deployment + "}"


def rate(scope: str, part: str, tag: str) -> str:
    """Rate-limit state of a scope (``acct:{id}``, ``acct:{id}:model:{m}``, ``dep:{name}``) in
    the slot of ``tag``: ``req`` zset of admissions, ``tok`` hash of their tokens, ``total``
    their sum, ``conc`` zset of concurrency leases."""
    return f"{PREFIX}:{tag}:rl:{scope}:{part}"


def account_rate(account_id: str) -> list[str]:
    """The account scope's keys, in ``RATE_PARTS`` order."""
    return [rate(f"acct:{account_id}", part, _account_tag(account_id)) for part in RATE_PARTS]


def account_model_rate(account_id: str, model: str) -> list[str]:
    """The account x model scope's keys, in ``RATE_PARTS`` order (the account's slot)."""
    return [rate(f"acct:{account_id}:model:{model}", part, _account_tag(account_id)) for part in RATE_PARTS]


def deployment_rate(deployment: str) -> list[str]:
    """The deployment scope's keys, in ``RATE_PARTS`` order (the deployment's own slot)."""
    return [rate(f"dep:{deployment}", part, _deployment_tag(deployment)) for part in RATE_PARTS]


def rate_scopes(account_id: str, model: str, deployment: str) -> list[str]:
    """The 12 keys of the three scopes a job is admitted in (account, account x model,
    deployment), each in ``RATE_PARTS`` order. The first 8 share the account's slot; the
    deployment's 4 are in a slot of their own."""
    return [*account_rate(account_id), *account_model_rate(account_id, model), *deployment_rate(deployment)]


# Sorted set: the account's throttled jobs, scored by submission time (admission order).
account_waiting = _by_account("account:{}:waiting")


def throttled_accounts(shard: int) -> str:
    """Sorted set: the shard's accounts with waiting jobs, scored by when (unix ms) to try the
    first one again."""
    return f"{PREFIX}:{{{ACCOUNT_SHARD_TAGS[shard]}}}:throttled"


def throttled_of(account_id: str) -> str:
    return throttled_accounts(account_shard(account_id))


def deployment_health(deployment: str, bucket: str) -> str:
    """Hash: a deployment's calls and failures in one window (``bucket``: its start / window)."""
    return f"{PREFIX}:{_deployment_tag(deployment)}:dep:health:{bucket}"


def deployment_cooldown(deployment: str) -> str:
    """String with a TTL: the deployment is cooling down (calls go to the model's others first)."""
    return f"{PREFIX}:{_deployment_tag(deployment)}:dep:cooldown"

# --- usage -----------------------------------------------------------------------------------------

# The ledger is kept per job shard, written by the script that ends a job with the job's other
# keys (exactly once, atomically); an account's usage is the sum over the shards.


def usage_accounts(shard: int) -> str:
    """Set: accounts that have usage in the shard."""
    return f"{PREFIX}:{shard_tag(shard)}:usage:accounts"


def usage_day(account_id: str, day: str, shard: int) -> str:
    """Hash: the account's usage on ``day`` (YYYY-MM-DD, UTC) in the shard, fields
    ``{model}|{counter}``."""
    return f"{PREFIX}:{shard_tag(shard)}:usage:{account_id}:{day}"


def usage_days(account_id: str, shard: int) -> str:
    """Sorted set: the days the account has usage for in the shard (member YYYY-MM-DD, score
    YYYYMMDD)."""
    return f"{PREFIX}:{shard_tag(shard)}:usage:{account_id}:days"

# --- batches ---------------------------------------------------------------------------------------

# Hash: the batch (status, timestamps, counters total/completed/failed, metadata, errors).
batch = _sharded("batch:{}")

# List: lines not yet handed to the queue, as prepared job specs (JSON).
batch_pending = _sharded("batch:{}:pending")

# Set: job ids of the lines already handed to the queue.
batch_jobs = _sharded("batch:{}:jobs")

# List: one JSONL line per succeeded request.
batch_results = _sharded("batch:{}:results")

# List: one JSONL line per failed, cancelled or expired request.
batch_errors = _sharded("batch:{}:errors")

# Sorted set: the account's batch ids by creation time.
account_batches = _family("account:{}:batches")

def active_batches(shard: int) -> str:
    """Sorted set: the shard's batches with lines still to feed or to finish, by creation time."""
    return f"{PREFIX}:{shard_tag(shard)}:batches:active"


def batch_in_flight(shard: int) -> str:
    """Counter: the shard's batch jobs handed to the queue and not finished yet (fleet-wide: the
    sum over the shards)."""
    return f"{PREFIX}:{shard_tag(shard)}:batches:in-flight"


# String: the lease of a batch's validation in the background (an API process's token).
batch_validation = _sharded("batch:{}:validation")


def batch_staging(batch_id: str, token: str) -> str:
    """List: the lines one validation of the batch staged, renamed to its pending lines at the end
    (in the batch's slot)."""
    return f"{batch_pending(batch_id)}:staging:{token}"


# Sorted set: batches being validated in the background, by creation time (an API process that
# finds one whose lease lapsed takes it over).
BATCHES_VALIDATING = f"{PREFIX}:batches:validating"


def batch_local_in_flight(shard: int) -> str:
    """Counter: of those, the local model's (its own budget: the local slots interactive work
    keeps free)."""
    return f"{PREFIX}:{shard_tag(shard)}:batches:in-flight:local"

# --- files (the OpenAI front door's uploads, and its batches' output files) ----------------------------

# Hash: a file (account, filename, purpose, bytes, times; an output file: its batch and kind).
file = _family("file:{}")
# List: an uploaded file's content, in chunks of bytes.
file_content = _family("file:{}:content")
# Sorted set: the account's files by creation time.
account_files = _family("account:{}:files")
# Hash: what the account's files hold, uploads in progress included (file id -> "bytes|held until"):
# the bounds on an account's files are reserved here (lua/reserve_file.lua).
account_files_held = _family("account:{}:files:held")

# --- webhooks (shared/webhooks.py, worker/services/webhooks.py) ------------------------------------

# The outbox and the delivery state share a tag of their own, ``{webhooks}``: the scripts that
# append an event once (``lua/emit_webhook.lua``) and claim due deliveries
# (``lua/claim_webhooks.lua``) touch several of them.
_WEBHOOKS_TAG = "{webhooks}"

# Stream: the events to deliver (fields ``event``: its JSON body, ``account``: its account id or
# empty), capped at about ``shared.webhooks.OUTBOX_MAX`` entries.
WEBHOOK_OUTBOX = f"{PREFIX}:{_WEBHOOKS_TAG}:webhooks:outbox"

# String: the id of the last outbox entry fanned out to the endpoints' deliveries.
WEBHOOK_CURSOR = f"{PREFIX}:{_WEBHOOKS_TAG}:webhooks:outbox:cursor"


def webhook_emitted(key: str) -> str:
    """String with a TTL: an event with this idempotency key was emitted (its id)."""
    return f"{PREFIX}:{_WEBHOOKS_TAG}:webhooks:emitted:{key}"


# Sorted set: deliveries to make (member ``{event id}|{endpoint id}``), scored by when (unix s)
# the next attempt is due; one being attempted is scored by when its claim lapses.
WEBHOOK_SCHEDULE = f"{PREFIX}:{_WEBHOOKS_TAG}:webhooks:schedule"

# Hash: each scheduled delivery's state (member -> JSON: the body, the endpoint, attempts made).
WEBHOOK_PENDING = f"{PREFIX}:{_WEBHOOKS_TAG}:webhooks:pending"

# Sorted set: the endpoints' ids by creation time.
WEBHOOK_ENDPOINTS = f"{PREFIX}:webhooks:endpoints"

# Hash: an endpoint (url, events, account_id, description, secret, disabled, times).
webhook_endpoint = _family("webhook:{}")

# List: an endpoint's recent delivery attempts, newest first (JSON each).
webhook_deliveries = _family("webhook:{}:deliveries")


def watched_batches(shard: int) -> str:
    """Sorted set: the shard's batches whose final status is still to be announced, by creation
    time (written with the batch's record, ``api/batches.py``)."""
    return f"{PREFIX}:{shard_tag(shard)}:webhooks:batches"


# The lock of the webhook fan-out's pass (named as ``lock("webhook-fanout")`` below would).
WEBHOOK_FANOUT_LOCK = f"{PREFIX}:lock:webhook-fanout"


# --- the console ----------------------------------------------------------------------------------

# Hash, with a TTL: a console session by the SHA-256 of its token (kind, the digest of the key it
# was opened with, its CSRF token).
console_session = _family("console:session:{}")

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

# --- API keys' own scope, budgets and fair share (the account's slot) ------------------------------


def key_limits(account_id: str, key_id: str) -> str:
    """Hash: an API key's own limits (rpm, tpm, max_concurrency, budget_nanousd, budget_period),
    in its account's slot, where admission reads them with the account's (``api/accounts.py``
    writes it with the key)."""
    return f"{PREFIX}:{_account_tag(account_id)}:account:{account_id}:key:{key_id or '-'}:limits"


def key_rate(account_id: str, key_id: str) -> list[str]:
    """The key scope's rate-limit keys, in ``RATE_PARTS`` order (the account's slot)."""
    return [rate(f"acct:{account_id}:key:{key_id or '-'}", part, _account_tag(account_id)) for part in RATE_PARTS]


def budget(account_id: str, key_id: str = "") -> str:
    """Hash: a budget's state, the account's (``key_id`` empty) or one key's: per period id
    (``2026-12-08``, ``2026-12``, ``total``) the settled cost ``spent:{pid}`` and the cost held
    by admitted jobs ``reserved:{pid}``, in nano-USD, and the thresholds already announced
    ``alerted:{pid}`` (the account's slot)."""
    scope = f"acct:{account_id}" + (f":key:{key_id}" if key_id else "")
    return f"{PREFIX}:{_account_tag(account_id)}:budget:{scope}"


# Hash: the account's admitted jobs' budget holds, job id -> "cost|account period|key id|key period".
budget_holds = _by_account("account:{}:budget:holds")


def budget_due(shard: int) -> str:
    """Sorted set: the shard's budget holds (member ``{account}|{job}``) scored by when (unix ms)
    the sweeper looks at the job again: a hold whose worker was lost is settled from the job's
    record (``worker/services/budgets.py``)."""
    return f"{PREFIX}:{{{ACCOUNT_SHARD_TAGS[shard]}}}:budget:due"


def budget_due_of(account_id: str) -> str:
    return budget_due(account_shard(account_id))


def fair_queued(account_id: str, queue: str) -> str:
    """Sorted set: the account's jobs on ``queue``'s broker list, handed out and not yet taken
    by a worker (member job id, score unix ms). Fair share lets an account have at most a few
    there (``CHATFLEET_FAIR_SHARE_QUEUED``): the rest wait in its ready line."""
    return f"{PREFIX}:{_account_tag(account_id)}:account:{account_id}:fair:{queue}:queued"


def fair_ready(account_id: str, queue: str) -> str:
    """Sorted set: the account's jobs for ``queue`` held back by fair share, in the order they are
    handed out (score: priority band, then submission time)."""
    return f"{PREFIX}:{_account_tag(account_id)}:account:{account_id}:fair:{queue}:ready"


def fair_accounts(shard: int) -> str:
    """Sorted set: the shard's accounts with jobs held back (member ``{account}|{queue}``, score
    unix ms of the last hand-out): the sweeper hands out what a lost worker did not."""
    return f"{PREFIX}:{{{ACCOUNT_SHARD_TAGS[shard]}}}:fair:accounts"


def fair_accounts_of(account_id: str) -> str:
    return fair_accounts(account_shard(account_id))
