"""The keyspace laid out for Redis Cluster (shared/keys.py): the keys a script takes share a hash
slot, and the refusal of one that does not, as a cluster would refuse it."""

import fakeredis
import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ClusterCrossSlotError

from shared import keys
from shared.jobs import batch_keys, new_job_id, usage_keys
from shared.scripts import Scripts
from tests.unit.jobstores import run


def slots(names) -> set[int]:
    return {key_slot(name.encode()) for name in names}


def test_the_shards_tags_spread_evenly_over_the_slots():
    for tags, n in ((keys.SHARD_TAGS, keys.SHARDS), (keys.ACCOUNT_SHARD_TAGS, keys.ACCOUNT_SHARDS)):
        assert len(set(tags)) == n
        for i, tag in enumerate(tags):
            assert i * REDIS_CLUSTER_HASH_SLOTS // n <= key_slot(tag.encode()) < (i + 1) * REDIS_CLUSTER_HASH_SLOTS // n


def test_a_jobs_keys_share_its_shards_slot_with_the_indexes_it_touches():
    job_id = new_job_id()
    shard = keys.shard_of(job_id)
    names = [keys.job(job_id), keys.job_events(job_id), keys.job_channel(job_id), keys.job_cancel(job_id),
             keys.job_lease(job_id), keys.running_of(job_id), keys.queued_of(job_id),
             *usage_keys("acct", "2026-12-03", job_id), *batch_keys("", job_id)]
    assert slots(names) == {key_slot(keys.SHARD_TAGS[shard].encode())}
    # Ids spread over every shard.
    assert {keys.shard_of(new_job_id()) for _ in range(2000)} == set(range(keys.SHARDS))


def test_a_batchs_lines_are_jobs_of_its_shard():
    batch_id = "batch_" + "3f" * 12
    shard = keys.shard_of(batch_id)
    line = new_job_id(shard)
    assert keys.shard_of(line) == shard
    assert len(slots([keys.job(line), *batch_keys(batch_id, line), keys.batch_pending(batch_id),
                      keys.batch_jobs(batch_id), keys.active_batches(shard)])) == 1
    other = next(j for j in (new_job_id() for _ in range(100)) if keys.shard_of(j) != shard)
    with pytest.raises(ValueError):
        batch_keys(batch_id, other)


def test_an_accounts_limits_share_a_slot_and_a_deployments_have_their_own():
    names = [keys.account("acct"), keys.account_waiting("acct"), keys.throttled_of("acct"),
             *keys.rate_scopes("acct", "gpt-4o", "openai-east")[:8]]
    assert len(slots(names)) == 1
    deployment = [*keys.deployment_rate("openai-east"), keys.deployment_health("openai-east", "123"),
                  keys.deployment_cooldown("openai-east")]
    assert len(slots(deployment)) == 1


def test_a_script_call_across_slots_is_refused_before_it_is_sent():
    async def go():
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        a = new_job_id(0)
        b = new_job_id(1)
        checked = Scripts(redis, check_slots=True)
        with pytest.raises(ClusterCrossSlotError, match="release_lock"):
            await checked.release_lock(keys=[keys.job(a), keys.job(b)], args=["x"])
        assert await checked.release_lock(keys=[keys.job(a)], args=["x"]) == 0
        # Unchecked, the same call goes through (one Redis does not care).
        assert await Scripts(redis).release_lock(keys=[keys.job(a), keys.job(b)], args=["x"]) == 0
    run(go())
