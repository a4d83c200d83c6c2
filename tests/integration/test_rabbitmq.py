"""RabbitMQ as the Celery broker (``CHATFLEET_BROKER_URL=amqp://...``), Redis only the state
store: jobs, streams, batches and usage work as on Redis, nothing of Celery's lands in Redis,
every message is confirmed before its job says so, and neither a worker killed mid-job, nor
RabbitMQ killed with jobs on its queues, nor a job submitted while it is down, loses or repeats
anything. Each test starts a RabbitMQ node of its own (``deploy.devstack.start_rabbitmq``)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import fakeredis
import pytest
import redis
from kombu import Connection

from deploy.devstack import Fleet, cluster_ports, rabbitmq_server, start_rabbitmq
from shared import keys
from shared.brokers import AmqpBroker
from shared.queue import delivery_tag, run_job_message
from shared.scripts import Scripts
from tests.helpers import (
    assert_a_worker_killed_mid_job_loses_nothing,
    assert_jobs_streams_batches_and_usage_work,
    poll_until_done,
    wait_for,
)
from worker.metrics import RedisGauges

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(rabbitmq_server() is None, reason="rabbitmq-server is not installed")]

SHORT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "model_parameters": {"max_tokens": 3}}


def depths(broker_url: str) -> dict[str, int]:
    """Messages ready on each of the fleet's queues, as RabbitMQ counts them."""
    with Connection(broker_url, connect_timeout=5) as connection:
        return {queue: connection.channel().queue_declare(queue=queue, passive=True).message_count
                for queue in keys.QUEUES}


def queued_job_ids(broker_url: str, queue: str) -> list[str]:
    """The job of every message ready on ``queue``, left there: each is taken unacknowledged,
    and closing the connection hands them all back."""
    with Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        found = []
        while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
            found.append(message.headers["id"])
        return found


def test_jobs_streams_batches_and_usage_with_rabbitmq_as_the_broker(own_stack):
    stack = own_stack(fake_url=own_stack.fake_url, rabbitmq=True)
    job = assert_jobs_streams_batches_and_usage_work(stack)
    state = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        # Celery's queues and kombu's bookkeeping are RabbitMQ's, not Redis's.
        celery_keys = [k for k in state.scan_iter(count=1000)
                       if k.startswith((*keys.QUEUES, keys.UNACKED, "_kombu.", "celery"))]
        assert celery_keys == []
        assert state.hget(keys.job(job["id"]), "pushed")  # the confirmed message, named in the job
    finally:
        state.close()
    assert depths(stack.broker_url) == {queue: 0 for queue in keys.QUEUES}


def test_confirmed_messages_outlive_rabbitmq_killed_and_restarted(own_stack, tmp_path):
    """Jobs queued while no worker consumes: each job's record names its message once RabbitMQ
    confirmed it; RabbitMQ SIGKILLed and started again on its data keeps them all, and a worker
    started afterwards runs each once. A job submitted while RabbitMQ is down is accepted (202),
    and pushed by the reaper once RabbitMQ is back: it runs once too."""
    stack = own_stack(fake_url=own_stack.fake_url, rabbitmq=True)
    stack.fleet.stop("worker-interactive")
    state = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        with stack.client() as client:
            ids = []
            for _ in range(5):
                r = client.post("/v4/jobs", json=SHORT)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            for job_id in ids:
                message, pushed = state.hmget(keys.job(job_id), "message", "pushed")
                assert message and pushed == delivery_tag(message)
            assert depths(stack.broker_url)[keys.QUEUE_INTERACTIVE] == 5
            # The workers' queue-depth gauge reads the same from RabbitMQ.
            gauges = RedisGauges(stack.broker_url, stack.redis_url)
            assert gauges._read()[0] == {keys.QUEUE_INTERACTIVE: 5, keys.QUEUE_BATCH: 0, keys.QUEUE_LOCAL: 0}

            port = int(stack.broker_url.rsplit(":", 1)[1].split("/")[0])
            stack.fleet.stop("rabbitmq", signal.SIGKILL)
            down = client.post("/v4/jobs", json=SHORT)
            # Recorded, so accepted: a 503 would have the client submit it again, and both would run.
            assert down.status_code == 202, down.text
            stranded = down.json()["id"]
            assert _stranded(state, ids) == stranded  # queued, its message unconfirmed
            message, pushed = state.hmget(keys.job(stranded), "message", "pushed")
            assert message and pushed is None

            start_rabbitmq(stack.fleet, port, stack.log_dir.parent / "rabbitmq", stack.log_dir)
            # The five confirmed messages were kept on disk, each once. The sixth job's may be
            # there already, even twice: the reaper pushes it as soon as RabbitMQ answers again,
            # and again one period later if that push was not confirmed in time (it may still
            # land; whichever message comes second finds its job running or done: each runs
            # once, checked below).
            on_queue = Counter(queued_job_ids(stack.broker_url, keys.QUEUE_INTERACTIVE))
            assert {job_id: on_queue[job_id] for job_id in ids} == {job_id: 1 for job_id in ids}, on_queue
            assert set(on_queue) <= {*ids, stranded}, on_queue
            stack.start_worker("worker-interactive-2", [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], 50)
            jobs = [poll_until_done(client, job_id, timeout=60) for job_id in [*ids, stranded]]
            usage = client.get("/v4/usage", params={"group_by": "model"}).json()
        assert [j["status"] for j in jobs] == ["succeeded"] * 6, stack.logs()
        assert [j["attempts"] for j in jobs] == [1] * 6
        assert {row["model"]: row["requests"] for row in usage["data"]} == {"gpt-4o-mini": 6}
        assert len(own_stack.fake.requests()) == 6  # each ran once
        wait_for(lambda: depths(stack.broker_url)[keys.QUEUE_INTERACTIVE] == 0, what="an empty queue")
    finally:
        state.close()


def _stranded(state: redis.Redis, known: list[str]) -> str:
    """The one queued job that is not among ``known``."""
    queued = [job_id for shard in range(keys.SHARDS) for job_id in state.zrange(keys.queued_jobs(shard), 0, -1)]
    (job_id,) = [j for j in queued if j not in known]
    return job_id


def test_a_worker_killed_mid_job_loses_nothing_with_rabbitmq_as_the_broker(own_stack):
    assert_a_worker_killed_mid_job_loses_nothing(own_stack(interactive=False, rabbitmq=True))


def test_a_push_to_a_queue_deleted_under_the_publisher_is_declared_again_not_lost(tmp_path):
    """RabbitMQ hands back (``basic.return``) a mandatory message whose queue is gone, and then
    confirms it all the same: the publisher takes the return as a refusal, declares the queue
    again on a new channel and publishes once more, so the push lands instead of vanishing."""
    fleet = Fleet()
    try:
        url = start_rabbitmq(fleet, cluster_ports(1)[0], tmp_path / "rabbitmq")
        queue = keys.QUEUE_LOCAL

        async def go():
            state = fakeredis.FakeAsyncRedis(decode_responses=True)
            broker = AmqpBroker(url, state, Scripts(state))
            try:
                await broker.push(queue, run_job_message("job_1", queue))
                assert queued_job_ids(url, queue) == ["job_1"]
                with Connection(url, connect_timeout=5) as connection:
                    connection.channel().queue_delete(queue=queue)  # job_1 goes with it: deleted by hand
                await broker.push(queue, run_job_message("job_2", queue))
            finally:
                await broker.close()

        asyncio.run(go())
        assert queued_job_ids(url, queue) == ["job_2"]
    finally:
        fleet.stop_all()
