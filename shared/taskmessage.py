"""The Celery message that carries a job id, built without a Celery producer.

Writing the message ourselves lets the API put the job record and its queue entry in one Redis
script, atomically (a job is never recorded without being queued, nor queued without a record) and
keeps the API free of Celery's blocking producer. The layout is Celery's task protocol 2 as
the kombu Redis transport stores it; a test checks it against what Celery itself sends.
"""

from __future__ import annotations

import base64
import socket
import uuid

import orjson

from shared import keys

_ORIGIN = f"chatfleet-api@{socket.gethostname()}"


def run_job_message(job_id: str, queue: str) -> bytes:
    body = orjson.dumps(
        [[job_id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": keys.RUN_JOB_TASK,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            # What Flower shows as the task's arguments: the job id only, never content.
            "argsrepr": repr([job_id]),
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return orjson.dumps(message)
