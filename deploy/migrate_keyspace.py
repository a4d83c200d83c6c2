"""Move a fleet's state from the keyspace before hash tags to the one of ``shared/keys.py``.

    .venv/bin/python -m deploy.migrate_keyspace [--redis-url URL] [--dry-run]

The keyspace that runs on Redis Cluster names a job's keys, an account's limits and the
fleet-wide indexes by shard (``shared/keys.py``). A fleet whose Redis holds keys of the earlier
layout (``chatfleet:job:ID``, ``chatfleet:jobs:running``, ``chatfleet:account:ID``,
``chatfleet:usage:ACCOUNT:DAY``, ...) is moved over by this command, on that one Redis, with the
fleet stopped: each key is renamed (its TTL kept), and each index is split into its shards'.
Keys already in the new layout, and those the layouts share (API keys, files, account lists,
workers, locks, Celery's), are left alone; running it again changes nothing.

It refuses while a worker has reported in the last minute (stop the fleet first), and while a
batch has lines handed to the queue and not finished (the lines of a batch are jobs of its
shard; those of the earlier layout are not: let them finish, or cancel the batch, then run it).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Callable

from shared import keys
from shared.connections import sync_redis
from shared.settings import get_settings

P = re.escape(keys.PREFIX)
# Old names, each with the new name of what it holds (None: an index, split by member).
RENAMES: list[tuple[re.Pattern, Callable[..., str]]] = [
    (re.compile(rf"^{P}:job:(?P<id>[^:{{}}]+)$"), lambda id: keys.job(id)),
    (re.compile(rf"^{P}:job:(?P<id>[^:{{}}]+):events$"), lambda id: keys.job_events(id)),
    (re.compile(rf"^{P}:job:(?P<id>[^:{{}}]+):cancel$"), lambda id: keys.job_cancel(id)),
    (re.compile(rf"^{P}:job:(?P<id>[^:{{}}]+):lease$"), lambda id: keys.job_lease(id)),
    (re.compile(rf"^{P}:account:(?P<id>[^:{{}}]+)$"), lambda id: keys.account(id)),
    (re.compile(rf"^{P}:account:(?P<id>[^:{{}}]+):waiting$"), lambda id: keys.account_waiting(id)),
    (re.compile(rf"^{P}:rl:acct:(?P<id>[^{{}}]+?):model:(?P<model>[^{{}}]+):(?P<part>req|tok|total|conc)$"),
     lambda id, model, part: keys.account_model_rate(id, model)[keys.RATE_PARTS.index(part)]),
    (re.compile(rf"^{P}:rl:acct:(?P<id>[^:{{}}]+):(?P<part>req|tok|total|conc)$"),
     lambda id, part: keys.account_rate(id)[keys.RATE_PARTS.index(part)]),
    (re.compile(rf"^{P}:rl:dep:(?P<dep>[^{{}}]+):(?P<part>req|tok|total|conc)$"),
     lambda dep, part: keys.deployment_rate(dep)[keys.RATE_PARTS.index(part)]),
    (re.compile(rf"^{P}:dep:(?P<dep>[^{{}}]+):health:(?P<bucket>\d+)$"),
     lambda dep, bucket: keys.deployment_health(dep, bucket)),
    (re.compile(rf"^{P}:dep:(?P<dep>[^{{}}]+):cooldown$"), lambda dep: keys.deployment_cooldown(dep)),
    # The ledger's earlier days go to shard 0: an account's usage is the sum over the shards.
    (re.compile(rf"^{P}:usage:(?P<id>[^{{}}]+):days$"), lambda id: keys.usage_days(id, 0)),
    (re.compile(rf"^{P}:usage:(?P<id>[^{{}}]+):(?P<day>\d{{4}}-\d{{2}}-\d{{2}})$"),
     lambda id, day: keys.usage_day(id, day, 0)),
    (re.compile(rf"^{P}:usage:accounts$"), lambda: keys.usage_accounts(0)),
    (re.compile(rf"^{P}:batch:(?P<id>[^:{{}}]+)$"), lambda id: keys.batch(id)),
    (re.compile(rf"^{P}:batch:(?P<id>[^:{{}}]+):pending$"), lambda id: keys.batch_pending(id)),
    (re.compile(rf"^{P}:batch:(?P<id>[^:{{}}]+):jobs$"), lambda id: keys.batch_jobs(id)),
    (re.compile(rf"^{P}:batch:(?P<id>[^:{{}}]+):results$"), lambda id: keys.batch_results(id)),
    (re.compile(rf"^{P}:batch:(?P<id>[^:{{}}]+):errors$"), lambda id: keys.batch_errors(id)),
]
# Old fleet-wide indexes (sorted sets), each split into its shards' by member.
SPLITS: dict[str, Callable[[str], str]] = {
    f"{keys.PREFIX}:jobs:running": keys.running_of,
    f"{keys.PREFIX}:jobs:queued": keys.queued_of,
    f"{keys.PREFIX}:throttled": keys.throttled_of,
    f"{keys.PREFIX}:batches:active": lambda batch_id: keys.active_batches(keys.shard_of(batch_id)),
}
# Old per-account job lists, split into the account's per-shard ones.
OLD_ACCOUNT_JOBS = re.compile(rf"^{P}:account:(?P<id>[^:{{}}]+):jobs$")
OLD_IN_FLIGHT = f"{keys.PREFIX}:batches:in-flight"


def _account_split(account_id: str) -> Callable[[str], str]:
    """Where each job of an account's old list goes: the account's list in the job's shard."""
    return lambda job_id: keys.account_jobs(account_id, keys.shard_of(job_id))


class Refused(Exception):
    pass


def new_name(key: str) -> str | None:
    """The new name of an old key, or None when the key is not one to rename."""
    for pattern, name in RENAMES:
        found = pattern.match(key)
        if found:
            return name(**found.groupdict())
    return None


def check(redis) -> None:
    recent = redis.zrangebyscore(keys.WORKERS, time.time() - 60, "+inf")
    if recent:
        raise Refused(f"workers reported in the last minute ({', '.join(recent[:5])}): stop the fleet first")
    in_flight = int(redis.get(OLD_IN_FLIGHT) or 0)
    if in_flight > 0:
        raise Refused(f"{in_flight} batch lines are queued or running in the earlier layout: let them finish "
                      "(or cancel their batches), then migrate")


def _move(redis, key: str, new: str) -> None:
    """Rename ``key`` to ``new``. Where the fleet already wrote ``new`` (it ran in the new layout
    before this): a ledger's counters are added up and its days joined; anything else of the
    earlier layout is what its owner set, and wins."""
    if redis.exists(new) and key.startswith(f"{keys.PREFIX}:usage:"):
        if redis.type(key) == "hash":
            pipe = redis.pipeline(transaction=True)
            for field, value in redis.hgetall(key).items():
                pipe.hincrby(new, field, int(value))
            pipe.delete(key)
            pipe.execute()
            return
        if redis.type(key) == "zset":
            redis.zunionstore(new, [new, key], aggregate="MAX")
            redis.delete(key)
            return
        if redis.type(key) == "set":
            redis.sunionstore(new, [new, key])
            redis.delete(key)
            return
    redis.rename(key, new)


def migrate(redis, dry_run: bool = False) -> Counter:
    """Move every old key; returns how many of each kind (``renamed``, ``split``, ``members``)."""
    check(redis)
    done: Counter = Counter()
    for key in redis.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
        account_jobs = OLD_ACCOUNT_JOBS.match(key)
        if key in SPLITS or account_jobs:
            split = SPLITS[key] if account_jobs is None else _account_split(account_jobs["id"])
            members = redis.zrange(key, 0, -1, withscores=True)
            ttl = redis.ttl(key)
            if not dry_run:
                pipe = redis.pipeline(transaction=True)
                for member, score in members:
                    pipe.zadd(split(member), {member: score})
                    if ttl > 0:
                        pipe.expire(split(member), ttl)
                pipe.delete(key)
                pipe.execute()
            done["split"] += 1
            done["members"] += len(members)
        elif key == OLD_IN_FLIGHT:  # 0 (checked): the new counters start from there
            if not dry_run:
                redis.delete(key)
        else:
            new = new_name(key)
            if new is None or new == key:
                continue
            if not dry_run:
                _move(redis, key, new)
            done["renamed"] += 1
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="the state store (default: the settings')")
    parser.add_argument("--dry-run", action="store_true", help="count what would move, move nothing")
    args = parser.parse_args()
    redis = sync_redis(args.redis_url or get_settings().state_url)
    try:
        done = migrate(redis, dry_run=args.dry_run)
    except Refused as exc:
        print(f"not migrated: {exc}", file=sys.stderr)
        return 2
    finally:
        redis.close()
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb}: {done['renamed']} keys renamed, {done['split']} indexes split ({done['members']} members)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
