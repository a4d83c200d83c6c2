"""The message the API builds is the one Celery itself would send."""

import base64
import json

import pytest
from celery import Celery

from deploy.devstack import Fleet, free_port, start_redis
from shared import keys
from shared.connections import sync_redis
from shared.queue import run_job_message

pytestmark = pytest.mark.integration


def test_matches_celerys_own_message(tmp_path):
    fleet = Fleet()
    try:
        url = start_redis(fleet, free_port(), tmp_path / "redis")
        app = Celery("probe", broker=url)
        app.conf.task_ignore_result = True
        app.send_task(keys.RUN_JOB_TASK, args=["job_1"], task_id="job_1", queue=keys.QUEUE_LOCAL,
                      ignore_result=True)
        redis = sync_redis(url)
        (celerys,) = [json.loads(m) for m in redis.lrange(keys.QUEUE_LOCAL, 0, -1)]
        ours = json.loads(run_job_message("job_1", keys.QUEUE_LOCAL))
    finally:
        fleet.stop_all()

    assert set(ours) == set(celerys)
    for field in ("content-encoding", "content-type"):
        assert ours[field] == celerys[field]
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(base64.b64decode(celerys["body"]))
    differs = {"origin"}
    assert set(ours["headers"]) == set(celerys["headers"])
    assert {k: v for k, v in ours["headers"].items() if k not in differs} == \
        {k: v for k, v in celerys["headers"].items() if k not in differs}
    assert set(ours["properties"]) == set(celerys["properties"])
    # Per-message values: the delivery tag, and reply_to, the sending app's reply queue (the
    # API expects no replies: results live in the job record).
    per_message = {"delivery_tag", "reply_to"}
    assert {k: v for k, v in ours["properties"].items() if k not in per_message} == \
        {k: v for k, v in celerys["properties"].items() if k not in per_message}
