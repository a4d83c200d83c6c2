"""deploy/migrate_keyspace.py: a fleet's state in the earlier layout, moved to the sharded one
and read back through the fleet's own code."""

import asyncio
import time
from datetime import date

import fakeredis
import pytest

from api.usage import read_usage
from deploy.migrate_keyspace import Refused, migrate
from shared import keys
from shared.jobs import JobStore
from shared.settings import Settings

OLD = "chatfleet"
JOB = "job_" + "7c" * 16


def old_fleet(server) -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis(server=server, decode_responses=True)
    r.hset(f"{OLD}:job:{JOB}", mapping={"id": JOB, "account_id": "acct", "status": "running", "queue": "q"})
    r.expire(f"{OLD}:job:{JOB}", 3600)
    r.xadd(f"{OLD}:job:{JOB}:events", {"t": "token", "d": "{}"}, id="0-1")
    r.set(f"{OLD}:job:{JOB}:lease", "w/1", px=60_000)
    r.zadd(f"{OLD}:jobs:running", {JOB: 1.0})
    r.zadd(f"{OLD}:jobs:queued", {"job_" + "01" * 16: 2.0})
    r.zadd(f"{OLD}:account:acct:jobs", {JOB: 1.0})
    r.expire(f"{OLD}:account:acct:jobs", 3600)
    r.hset(f"{OLD}:account:acct", mapping={"name": "acct", "rpm": "60"})
    r.zadd(f"{OLD}:account:acct:waiting", {"job_x": 3.0})
    r.zadd(f"{OLD}:throttled", {"acct": 123})
    r.zadd(f"{OLD}:rl:acct:acct:req", {JOB: 1})
    r.zadd(f"{OLD}:rl:acct:acct:model:gpt-4o:conc", {JOB: 1})
    r.set(f"{OLD}:rl:dep:openai-east:total", 40)
    r.set(f"{OLD}:dep:openai-east:cooldown", "5 calls, 5 failed", ex=30)
    r.hset(f"{OLD}:usage:acct:2026-12-01", mapping={"m|requests": 3, "m|prompt_tokens": 30})
    r.zadd(f"{OLD}:usage:acct:days", {"2026-12-01": 20261201})
    r.sadd(f"{OLD}:usage:accounts", "acct")
    r.hset(f"{OLD}:batch:batch_{'ab' * 12}", mapping={"id": f"batch_{'ab' * 12}", "status": "in_progress"})
    r.rpush(f"{OLD}:batch:batch_{'ab' * 12}:pending", "{}")
    r.zadd(f"{OLD}:batches:active", {f"batch_{'ab' * 12}": 5.0})
    r.set(f"{OLD}:batches:in-flight", 0)
    r.hset(keys.api_key("digest"), mapping={"account_id": "acct"})  # shared by both layouts
    return r


def test_the_earlier_layout_moves_over_and_reads_back():
    server = fakeredis.FakeServer()
    r = old_fleet(server)
    # The fleet already ran in the new layout for a while: its usage adds up with the old.
    r.hset(keys.usage_day("acct", "2026-12-01", 0), "m|requests", 2)
    r.zadd(keys.usage_days("acct", 0), {"2026-12-01": 20261201})
    done = migrate(r)
    assert done["split"] == 5 and done["members"] == 5
    assert r.zscore(keys.account_jobs("acct", keys.shard_of(JOB)), JOB) == 1.0
    assert not [k for k in r.scan_iter(match=f"{OLD}:*") if "{" not in k and k != keys.api_key("digest")]
    assert r.hgetall(keys.job(JOB))["status"] == "running" and 3000 < r.ttl(keys.job(JOB)) <= 3600
    assert r.get(keys.job_lease(JOB)) == "w/1"
    assert r.zscore(keys.running_of(JOB), JOB) == 1.0
    assert r.zscore(keys.queued_of("job_" + "01" * 16), "job_" + "01" * 16) == 2.0
    assert r.hget(keys.account("acct"), "rpm") == "60"
    assert r.zrange(keys.account_waiting("acct"), 0, -1) == ["job_x"]
    assert r.zscore(keys.throttled_of("acct"), "acct") == 123
    assert r.zcard(keys.account_rate("acct")[0]) == 1
    assert r.zcard(keys.account_model_rate("acct", "gpt-4o")[3]) == 1
    assert r.get(keys.deployment_rate("openai-east")[2]) == "40"
    assert r.ttl(keys.deployment_cooldown("openai-east")) > 0
    batch_id = f"batch_{'ab' * 12}"
    assert r.lrange(keys.batch_pending(batch_id), 0, -1) == ["{}"]
    assert r.zscore(keys.active_batches(keys.shard_of(batch_id)), batch_id) == 5.0
    assert r.hget(keys.api_key("digest"), "account_id") == "acct"

    async def read():
        redis = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
        store = JobStore(redis, Settings(check_slots=True))
        return (await store.get(JOB), await read_usage(redis, "acct", date(2026, 12, 1), date(2026, 12, 1)))

    job, usage = asyncio.run(read())
    assert job["id"] == JOB
    assert [(u["requests"], u["prompt_tokens"]) for u in usage] == [(5, 30)]
    assert migrate(r) == {}  # made again: nothing left to move


def test_it_refuses_while_the_fleet_runs_or_old_batch_lines_are_in_flight():
    r = old_fleet(fakeredis.FakeServer())
    r.zadd(keys.WORKERS, {"interactive@host": time.time()})
    with pytest.raises(Refused, match="stop the fleet"):
        migrate(r)
    r.delete(keys.WORKERS)
    r.set(f"{OLD}:batches:in-flight", 3)
    with pytest.raises(Refused, match="3 batch lines"):
        migrate(r)
    assert r.exists(f"{OLD}:job:{JOB}")  # nothing moved
