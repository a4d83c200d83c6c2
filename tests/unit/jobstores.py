"""A job store on fakeredis (which runs the Lua scripts), and helpers for the tests that use one."""

import asyncio

import fakeredis

from shared import keys
from shared.jobs import JobStore
from shared.jobspec import JobSpec, Sampling, Turn
from shared.settings import Settings

#: A job's spec, for the tests whose jobs never reach a provider.
SPEC = JobSpec(model="m", messages=(Turn("user", "hi"),), params=Sampling(temperature=0.2, max_tokens=16),
               prompt_bytes=2)


def fake_store(fair_share: bool = False) -> JobStore:
    """A store on fakeredis. Fair share is off unless asked for: most tests here move jobs
    through their states without the admissions that hand held-back jobs out
    (tests/unit/test_fair_share.py has those)."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    places = {} if fair_share else {"fair_share_queued": 0, "fair_share_queued_local": 0}
    return JobStore(redis, Settings(max_deliveries=2, lease_seconds=5, check_slots=True, **places))


def run(coro):
    return asyncio.run(coro)


async def new_job(store, queue=keys.QUEUE_LOCAL):
    record = await store.create(account_id="acct", model="m", queue=queue, spec=SPEC)
    return record["id"]
