"""A job's events: what workers publish and the API relays.

Each event has a sequence number 1, 2, 3, ... (its stream id is ``0-<seq>``), a type
(``token``, ``throttled``, ``end``, ``error``) and a JSON data string that is sent to clients as
it is. Workers append them to the job's stream ``chatfleet:job:{id}:events`` (the source of
truth, kept as long as the job) and publish them live on ``chatfleet:job:{id}:live`` as
``"<seq>\\n<type>\\n<data>"``, in the same script (``lua/publish_events.lua``). The API's
follower (``api/streams.py``) reads the stream for whatever pub/sub did not bring.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared import keys

TOKEN = "token"
THROTTLED = "throttled"
END = "end"
ERROR = "error"
TERMINAL_EVENTS = frozenset({END, ERROR})


class Event(NamedTuple):
    seq: int
    type: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


def parse_live(payload: str) -> Event:
    seq, type_, data = payload.split("\n", 2)
    return Event(int(seq), type_, data)


def stream_event(entry_id: str, fields: dict[str, str]) -> Event:
    """The event of one stream entry (id ``0-<seq>``, fields ``t`` and ``d``)."""
    return Event(int(entry_id.split("-")[1]), fields["t"], fields["d"])


async def read_events(redis: Any, job_id: str, after: int = 0, count: int | None = None) -> list[Event]:
    entries = await redis.xrange(keys.job_events(job_id), min=f"0-{after + 1}", count=count)
    return [stream_event(entry_id, fields) for entry_id, fields in entries]


async def last_event_seq(redis: Any, job_id: str) -> int:
    last = await redis.xrevrange(keys.job_events(job_id), count=1)
    return int(last[0][0].split("-")[1]) if last else 0
