"""Publishing an attempt's text as token events: coalesced across every job of the process
(``Publisher``), and without making the provider's stream wait (``Emitter``).

Each event is appended to the job's stream and published live by ``lua/publish_events.lua``,
fenced by the attempt's lease: a publish that finds the lease gone raises ``LostOwnership``,
one that finds a cancel request ``JobCancelled``. What subscribers have is the attempt's
``Transcript`` (``worker/attempt.py``'s ``Attempt`` is one).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field

import orjson
from redis.exceptions import RedisError

from shared.events import TOKEN
from shared.jobs import JobStore
from shared.results import ToolCallPiece, stream_chunk, tool_calls_of

#: What one token event carries: a piece of text, or the answer's tool calls, whole.
Piece = str | tuple[ToolCallPiece, ...]


class JobCancelled(Exception):
    pass


class LostOwnership(Exception):
    """Another attempt owns the job now (our lease lapsed); this one must stop writing."""



@dataclass
class Transcript:
    """What subscribers have of a job's answer: the number of its last event (``seq``) and the
    pieces its token events carried (texts, and tool calls' pieces), moved only once a publish
    landed."""

    job_id: str
    token: str  # the attempt's lease, which fences every publish
    seq: int
    delivered: list[Piece] = field(default_factory=list)
    emitter: Emitter | None = None

    @property
    def text(self) -> str:
        return "".join(p for p in self.delivered if isinstance(p, str))

    @property
    def tool_pieces(self) -> list[ToolCallPiece]:
        return [call for p in self.delivered if isinstance(p, tuple) for call in p]

    def tool_calls(self) -> list[dict]:
        """The tool calls delivered, whole (OpenAI's ``message.tool_calls``)."""
        return tool_calls_of(self.tool_pieces)


class Publisher:
    """The publishes of every running job of the process, coalesced: whatever jobs submit while
    one round trip is in flight goes out together in the next (one script call for all of
    them). With hundreds of streams, a round trip per token and job was the worker's largest
    cost; this keeps the relay latency at about one round trip."""

    # Per round trip, bounds on the script's run time inside Redis (which serves nobody else
    # meanwhile): jobs, and events (a job that fell behind brings up to Emitter.MAX_PENDING).
    MAX_JOBS = 256
    MAX_EVENTS = 2048

    def __init__(self, store: JobStore):
        self.store = store
        self.waiting: list[tuple[str, str, list[tuple[int, str, str]], asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def publish(self, job_id: str, token: str, events: list[tuple[int, str, str]]) -> int:
        """``JobStore.publish``, in the next round trip."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((job_id, token, events, future))
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        outcome = await future
        if isinstance(outcome, Exception):
            # A copy per job: one exception object raised in hundreds of tasks would collect
            # all their tracebacks.
            raise copy.copy(outcome) from outcome
        return outcome

    def _next_batch(self) -> list:
        batch: list = []
        events, taken = 0, 0
        for entry in self.waiting:
            if len(batch) == self.MAX_JOBS or (batch and events + len(entry[2]) > self.MAX_EVENTS):
                break
            taken += 1
            if not entry[3].done():  # its caller is gone (cancelled): nothing to send
                batch.append(entry)
                events += len(entry[2])
        del self.waiting[:taken]
        return batch

    async def _run(self) -> None:
        batch: list = []
        try:
            while self.waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    outcomes = await self.store.publish_many([(j, t, e) for j, t, e, _ in batch])
                    if len(outcomes) != len(batch):
                        raise RedisError(f"publish answered {len(outcomes)} of {len(batch)} jobs")
                except Exception as exc:  # noqa: BLE001 - Redis: every job of the round trip hears it
                    outcomes = [exc] * len(batch)
                for (*_, future), outcome in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(outcome)
                batch = []
        finally:
            self.task = None
            # Only when cancelled (the process is stopping): nobody is left to answer these.
            for *_, future in batch + self.waiting:
                future.cancel()
            self.waiting = []


class Emitter:
    """Publishes an attempt's text as token events without making the provider wait.

    While one publish is in flight, new deltas queue up and go together in the next one (one
    round trip for several events, each still its own event). ``attempt.seq`` and
    ``attempt.delivered`` move only when a publish succeeded, so they always say exactly what
    subscribers have. A lost lease or a cancel request seen by a publish is raised on the next
    ``emit`` or ``drain``.
    """

    MAX_PENDING = 256

    def __init__(self, publisher: Publisher, attempt: Transcript):
        self.publisher = publisher
        self.attempt = attempt
        self.pending: list[Piece] = []
        self.task: asyncio.Task | None = None
        self.closing = False  # the attempt is ending: what is pending goes with its last events

    async def emit(self, piece: Piece) -> None:
        self.pending.append(piece)
        if self.task is not None and self.task.done():
            task, self.task = self.task, None
            task.result()  # raises what the last publish learned
        if self.task is None:
            self.task = asyncio.create_task(self._flush())
        elif len(self.pending) >= self.MAX_PENDING:
            await self.drain()

    async def drain(self) -> None:
        """Wait until everything emitted is published (raises LostOwnership / JobCancelled)."""
        while self.task is not None:
            task = self.task
            # ``self.task`` keeps pointing at the publish in flight until it has landed: if this
            # wait is cancelled (a cancel, the time limit), ``close`` must still wait for it, or
            # the attempt's last events would reuse the ids it is writing.
            await asyncio.shield(task)
            self.task = None
            if self.pending:
                self.task = asyncio.create_task(self._flush())

    async def close(self) -> list[Piece]:
        """For an attempt that is ending: let the publish in flight land, then hand over the
        text not yet published, to go out with the attempt's last events in the same round
        trip. What the last publish raises no longer matters."""
        self.closing = True
        if self.task is not None:
            task, self.task = self.task, None
            try:
                await asyncio.shield(task)
            except (LostOwnership, JobCancelled):
                return []
        pending, self.pending = self.pending, []
        return pending

    async def _flush(self) -> None:
        attempt = self.attempt
        while self.pending and not self.closing:
            texts, self.pending = self.pending, []
            events = token_events(attempt, texts)
            outcome = await self.publisher.publish(attempt.job_id, attempt.token, events)
            if outcome < 0:
                self.pending = []
                raise LostOwnership()
            attempt.seq += len(texts)
            attempt.delivered.extend(texts)
            if outcome == 1:
                self.pending = []
                raise JobCancelled()


def token_events(attempt: Transcript, pieces: list[Piece]) -> list[tuple[int, str, str]]:
    """The token events of ``pieces``, numbered after the attempt's last published event."""
    return [(attempt.seq + i + 1, TOKEN, dumps(piece_chunk(p))) for i, p in enumerate(pieces)]


def piece_chunk(piece: Piece) -> dict:
    if isinstance(piece, tuple):
        return stream_chunk("", tool_calls=piece)
    return stream_chunk(piece)


def chunk_piece(data: str) -> Piece:
    """What a token event carried (read back by a later attempt)."""
    message = orjson.loads(data)["chat_completion"]["message"]
    calls = message.get("tool_calls")
    if calls:
        return tuple(ToolCallPiece.of(call) for call in calls)
    return message["content"]


def dumps(value) -> str:
    return orjson.dumps(value).decode()



async def emit(publisher: Publisher, attempt: Transcript, piece: Piece) -> None:
    """Publish ``piece`` as the attempt's next token event (through its emitter)."""
    if attempt.emitter is None:
        attempt.emitter = Emitter(publisher, attempt)
    await attempt.emitter.emit(piece)


async def unpublished(attempt: Transcript) -> list[tuple[int, str, str]]:
    """The token events still to publish, numbered after every published one; they go out
    with the attempt's last events (one round trip) and count as delivered from here on."""
    if attempt.emitter is None:
        return []
    texts = await attempt.emitter.close()
    events = token_events(attempt, texts)
    attempt.seq += len(texts)
    attempt.delivered.extend(texts)
    return events
