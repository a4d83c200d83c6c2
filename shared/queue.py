"""The queue's message: the Celery message that carries a job id, written and read here.

Every job reaches the queue through one path: the scripts that create, hand back or requeue a
job stage the message built here in the job's hash (``lua/_stage.lua``), and the caller pushes
it to the broker (``shared/brokers/``). Writing the message ourselves keeps the API free of
Celery's blocking producer, and lets the reaper tell a staged message from one that reached
its queue. The layout is Celery's task protocol 2 as kombu's Redis transport
stores it; a test checks it against what Celery itself sends. Its keys (the queue lists, kombu's
unacknowledged messages) are named in ``shared/keys.py``.
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


def delivery_tag(message: str | bytes) -> str | None:
    """The delivery tag of a message built by ``run_job_message`` (kombu's key for it in the
    unacknowledged hash), or None."""
    try:
        tag = orjson.loads(message)["properties"]["delivery_tag"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return tag if isinstance(tag, str) else None


def stored_job_id(payload: str | bytes) -> str | None:
    """The job id of a message as kombu stores it unacknowledged (``[message, exchange,
    routing key]``), or None if it is not a job's message."""
    try:
        job_id = orjson.loads(payload)[0]["headers"]["id"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return job_id if isinstance(job_id, str) else None


def body_job_id(body: bytes | memoryview | str) -> str | None:
    """The job id of a run-job task's JSON body (``[[job_id], {}, {...}]``), or None."""
    try:
        positional = orjson.loads(bytes(body) if isinstance(body, memoryview) else body)[0]
    except (orjson.JSONDecodeError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(positional, list) or len(positional) != 1 or not isinstance(positional[0], str):
        return None
    return positional[0]
