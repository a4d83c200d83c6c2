"""A job whose recorded spec cannot be read ends, failed, saying so, instead of being retried until
its deliveries are used up; and a spec or staged line of before the typed spec still runs."""

import asyncio

import orjson

from shared import keys
from shared.catalog import get_catalog
from shared.jobspec import JobSpec, StagedLine
from shared.settings import Settings
from tests.unit.jobstores import new_job, run
from worker.runner import JobRunner, RunningJob
from worker.services.batch_feeder import BatchFeeder

# As the API recorded a spec before every spec carried its completion bound.
OLD_SPEC = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "prompt": None,
            "params": {"temperature": 0.2, "max_tokens": None, "stop": []}, "prompt_bytes": 2}


def test_a_job_whose_spec_cannot_be_read_fails_at_once_and_says_so(store):
    async def go():
        job_id = await new_job(store)
        await store.redis.hset(keys.job(job_id), "spec", "{not a spec")
        runner = JobRunner(store, get_catalog(), {}, Settings())
        outcome = await runner.run(job_id, "token-1", RunningJob(job_id, "token-1", asyncio.current_task()))
        record = await store.get(job_id)
        return outcome, record

    outcome, record = run(go())
    assert outcome == "failed" and record["status"] == "failed"
    assert orjson.loads(record["error"]) == {"code": "internal_error", "message": "the job's request cannot be read"}


def test_a_job_failed_unclaimed_is_billed_what_was_delivered_when_its_spec_cannot_be_read(store):
    async def go():
        job_id = await new_job(store)
        await store.redis.hset(keys.job(job_id), mapping={"spec": "{not a spec", "admitted": 2})
        await store.fail_unclaimed(job_id, "redelivery_limit", "gave up")
        return await store.get(job_id)

    record = run(go())
    assert record["status"] == "failed" and orjson.loads(record["usage"])["prompt_tokens"] == 0


def test_a_line_staged_before_the_typed_spec_is_fed_and_read_with_its_bound(store):
    async def go():
        old_line = orjson.dumps({"custom_id": "old", "model": "gpt-4o", "queue": keys.QUEUE_BATCH, "spec": OLD_SPEC})
        await store.redis.rpush(keys.batch_pending("b1"), old_line)
        (job_id,) = await BatchFeeder(store, Settings()).feed("b1", "acct", [StagedLine.load(old_line)])
        return (await store.get(job_id))["spec"]

    spec = JobSpec.load(run(go()), get_catalog(), Settings().default_completion_reservation)
    assert spec.model == "gpt-4o" and spec.params.max_tokens == 4096 and spec.messages[0].content == "hi"
