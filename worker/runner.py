"""One attempt at one job: claim it, call the provider, publish tokens, finish it.

Everything a provider does wrong is handled here, once, for every adapter: retryable faults
(429, 5xx, timeouts, cut streams) are retried with exponential backoff and jitter, honouring
``Retry-After``, within a bounded number of calls and the job's time limit. A retry continues
after the text already delivered (the adapter is told what it was), so subscribers never see
text twice.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field

import orjson

from shared import metrics
from shared.catalog import Catalog, ModelSpec
from redis.exceptions import RedisError

from shared.jobs import END, ERROR, TOKEN, JobStore
from shared.limiter import Admission, Limiter, reservation
from shared.usage import UsageRecord
from shared.usage import record as usage_record
from shared.schemas import completion_body, stream_chunk
from shared.settings import Settings
from worker.providers.base import Completion, GenerationRequest, Provider, ProviderError, TextDelta
from worker.stops import StopFilter

log = logging.getLogger(__name__)

MAX_PROVIDER_CALLS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 20.0
MAX_RETRY_AFTER_SECONDS = 60.0


class JobCancelled(Exception):
    pass


class LostOwnership(Exception):
    """Another attempt owns the job now (our lease lapsed); this one must stop writing."""


@dataclass
class Attempt:
    job_id: str
    token: str
    seq: int
    delivered: list[str] = field(default_factory=list)
    account_id: str = ""
    model_id: str = ""
    started: float = 0.0
    prompt_bytes: int = 0
    submitted_at: float = 0.0
    batch_id: str = ""
    spec: ModelSpec | None = None
    usage: UsageRecord | None = None
    handle: object = None  # the runtime's RunningJob
    emitter: Emitter | None = None
    number: int = 0  # which delivery of the job this attempt is (the claim's count)

    @property
    def text(self) -> str:
        return "".join(self.delivered)

    @property
    def provider(self) -> str:
        return self.spec.family if self.spec is not None else "unknown"

    def log_context(self) -> dict:
        """The job context carried by this attempt's log lines (never any content)."""
        out = {"job_id": self.job_id, "account_id": self.account_id, "model": self.model_id,
               "attempt": self.number}
        if self.spec is not None:
            out["provider"] = self.spec.family
        if self.batch_id:
            out["batch_id"] = self.batch_id
        return out


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
        batch, events, taken = [], 0, 0
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
                except Exception as exc:  # Redis: every job of the round trip hears it
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

    def __init__(self, publisher: Publisher, attempt: Attempt):
        self.publisher = publisher
        self.attempt = attempt
        self.pending: list[str] = []
        self.task: asyncio.Task | None = None
        self.closing = False  # the attempt is ending: what is pending goes with its last events

    async def emit(self, text: str) -> None:
        self.pending.append(text)
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

    async def close(self) -> list[str]:
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


def token_events(attempt: Attempt, texts: list[str]) -> list[tuple[int, str, str]]:
    """The token events of ``texts``, numbered after the attempt's last published event."""
    return [(attempt.seq + i + 1, TOKEN, _dumps(stream_chunk(t))) for i, t in enumerate(texts)]


def chunk_text(data: str) -> str:
    return orjson.loads(data)["chat_completion"]["message"]["content"]


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


class JobRunner:
    def __init__(self, store: JobStore, catalog: Catalog, providers: dict[str, Provider], settings: Settings):
        self.store = store
        self.limiter = Limiter(store.redis, settings, store.channel)
        self.publisher = Publisher(store)
        self.catalog = catalog
        self.providers = providers
        self.settings = settings

    async def run(self, job_id: str, token: str, running) -> str:
        """Run one attempt, timed (``chatfleet_job_attempt_duration_seconds``, by outcome)."""
        started = time.monotonic()
        outcome = "interrupted"
        try:
            outcome = await self._run(job_id, token, running)
            return outcome
        finally:
            metrics.JOB_ATTEMPT_DURATION.labels(outcome).observe(time.monotonic() - started)

    async def _run(self, job_id: str, token: str, running) -> str:
        """Run one attempt; returns what happened (for logs and tests). ``running`` is the
        runtime's handle on the attempt: ``reason`` says why it was cancelled, and ``limits``
        is set here so that the runtime renews the attempt's concurrency leases."""
        claim = await self.store.claim(job_id, token)
        if claim.outcome == "exhausted":
            await self.store.fail_unclaimed(
                job_id, "redelivery_limit",
                f"the job was started {claim.attempts} times without finishing "
                "(each time its worker was lost); it will not be retried again",
            )
            return "exhausted"
        if claim.outcome != "claimed":
            return claim.outcome
        running.owned = True
        try:
            return await self._run_claimed(job_id, token, running, claim)
        finally:
            running.owned = False
            running.limits = None

    async def _run_claimed(self, job_id: str, token: str, running, claim) -> str:
        record = claim.record
        job_spec = orjson.loads(record["spec"])
        account_id = record["account_id"]
        prior = claim.events
        attempt = Attempt(job_id, token, prior[-1].seq if prior else 0,
                          [chunk_text(e.data) for e in prior if e.type == TOKEN],
                          account_id=account_id, model_id=job_spec["model"],
                          started=float(record.get("started_at") or time.time()),  # refreshed at admission
                          prompt_bytes=int(job_spec.get("prompt_bytes", 0)),
                          submitted_at=float(record["created_at"]), batch_id=record.get("batch_id", ""))
        context = {"job_id": job_id, "account_id": account_id, "model": job_spec["model"],
                   "attempt": claim.attempts}
        attempt.number = claim.attempts
        model = self.catalog.get(job_spec["model"])
        if model is None:
            outcome = await self._finish_failed(attempt, "model_unavailable",
                                                f"model {job_spec['model']!r} is no longer in the catalog")
            await self._pass_turn(attempt)
            return outcome
        attempt.spec = model
        context["provider"] = model.family
        attempt.handle = running

        try:
            admission = await self._admit(attempt, model, job_spec)
        except RedisError as exc:
            # Fail closed: nothing runs without admission. The lease lapses and the job is
            # handed out again once Redis answers.
            log.error("admission impossible, Redis unavailable: %s", exc, extra=context)
            return "redis_unavailable"
        metrics.record_admission(model.id, admission.outcome, admission.reason)
        if admission.outcome == "too_large":
            outcome = await self._finish_failed(attempt, "limit_exceeded", admission.reason)
            await self._pass_turn(attempt)
            return outcome
        if admission.outcome == "waiting":
            running.owned = False
            parked = await self.store.park(job_id, token, attempt.seq + 1, admission.retry_at, admission.reason)
            if parked == "parked":
                log.info("job throttled: %s", admission.reason, extra=context)
                return "throttled"
            if parked == "cancel":  # admission put it in the account's line: leave it
                outcome = await self._finish_cancelled(attempt)
                await self._pass_turn(attempt)
                return outcome
            return "lost"
        if admission.holds:
            running.limits = (account_id, model.id, model.deployment_name)
        if not record.get("started_at"):
            attempt.started = time.time()
        if admission.next_job:
            await self.store.requeue_waiting(admission.next_job, account_id)

        log.info("job started", extra={**context, "provider": model.family})
        with metrics.JOBS_RUNNING.track_inprogress():
            outcome = await self._execute(attempt, model, job_spec, running)
        running.limits = None
        if not admission.holds:
            return outcome  # no limit applied: nothing was reserved, nothing to release
        try:
            next_job = await self.limiter.settle(
                job_id=job_id, account_id=account_id, model=model.id, deployment=model.deployment_name,
                tokens=attempt.usage.prompt_tokens + attempt.usage.completion_tokens if attempt.usage else 0,
            )
            if next_job:
                await self.store.requeue_waiting(next_job, account_id)
        except RedisError as exc:  # the leases lapse on their own; the estimate stays counted
            log.warning("could not settle rate limits: %s", exc, extra=context)
        return outcome

    async def _pass_turn(self, attempt: Attempt) -> None:
        """A job that ends before admission may be first in its account's line (it waited
        earlier): the next one gets its turn now, not when the line's watchdog fires."""
        try:
            await self.store.requeue_waiting(attempt.job_id, attempt.account_id)
        except RedisError as exc:  # the watchdog still wakes the line
            log.warning("could not pass the turn on: %s", exc, extra=attempt.log_context())

    async def _admit(self, attempt: Attempt, model: ModelSpec, job_spec) -> Admission:
        limits = self.catalog.deployment_limits(model)
        completion_bound = min(model.max_output, self.settings.default_completion_reservation)
        return await self.limiter.admit(
            job_id=attempt.job_id, account_id=attempt.account_id, model=model.id,
            deployment=model.deployment_name, deployment_rpm=limits.rpm, deployment_tpm=limits.tpm,
            tokens=reservation(attempt.prompt_bytes, job_spec["params"].get("max_tokens"), completion_bound),
            submitted_at=attempt.submitted_at,
        )

    async def _execute(self, attempt: Attempt, model: ModelSpec, job_spec, running) -> str:
        job_id = attempt.job_id
        try:
            provider = self.providers.get(model.family)
            if provider is None:
                raise ProviderError(f"no adapter for the {model.family} family", code="model_unavailable")
            try:
                async with asyncio.timeout(self.settings.job_time_limit_seconds):
                    completion = await self._generate(attempt, model, provider, job_spec)
            except TimeoutError:
                raise ProviderError(
                    f"the job ran longer than its limit of {self.settings.job_time_limit_seconds:g} s",
                    code="timeout",
                ) from None
        except JobCancelled:
            return await self._finish_cancelled(attempt)
        except asyncio.CancelledError:
            if running.reason == "cancel":
                asyncio.current_task().uncancel()
                return await self._finish_cancelled(attempt)
            if running.reason == "shutdown":
                # The grace period is over: hand the job to another worker now rather than
                # let its lease lapse. What was delivered stays delivered; the next attempt
                # continues after it, and only the attempt that finishes records usage.
                asyncio.current_task().uncancel()
                running.owned = False
                if await self.store.hand_back(job_id, attempt.token):
                    log.warning("job handed back at shutdown", extra=attempt.log_context())
                    return "handed_back"
                return "lost"
            raise  # lost ownership: another attempt has taken over
        except LostOwnership:
            log.warning("job lost to another attempt", extra=attempt.log_context())
            return "lost"
        except ProviderError as exc:
            return await self._finish_failed(attempt, exc.code, exc.message)
        except RedisError as exc:
            # The job store is unreachable: nothing can be recorded now. The lease lapses and
            # the job is handed out again once Redis answers, continuing after what was published.
            log.error("Redis unavailable mid-job, leaving it to be resumed: %s", exc, extra=attempt.log_context())
            return "redis_unavailable"
        except Exception:
            log.exception("job failed unexpectedly", extra=attempt.log_context())
            return await self._finish_failed(attempt, "internal_error", "the worker hit an unexpected error")
        return await self._finish_succeeded(attempt, completion)

    async def _generate(self, attempt: Attempt, model: ModelSpec, provider: Provider, job_spec) -> Completion:
        params = job_spec["params"]
        calls = 0
        while True:
            calls += 1
            stops = StopFilter(params.get("stop"))
            request = GenerationRequest(
                spec=model, messages=job_spec["messages"], prompt=job_spec.get("prompt"),
                params=params, continuation=attempt.text, continuation_events=len(attempt.delivered),
                job_id=attempt.job_id,
            )
            completion = None
            call_started = time.monotonic()
            first_text = True
            try:
                async for item in provider.stream(request):
                    if isinstance(item, TextDelta):
                        if first_text and item.text:
                            first_text = False
                            metrics.PROVIDER_TTFT.labels(model.family, model.id).observe(
                                time.monotonic() - call_started)
                        text = stops.feed(item.text)
                        if text:
                            await self._emit(attempt, text)
                    else:
                        completion = item
                if completion is None:
                    raise ProviderError("the provider's stream ended before it finished",
                                        code="stream_cut", retryable=True)
            except ProviderError as exc:
                metrics.record_provider_call(model.family, model.id, "error", time.monotonic() - call_started,
                                             exc.code)
                if not exc.retryable or calls >= MAX_PROVIDER_CALLS:
                    raise
                if attempt.emitter is not None:
                    await attempt.emitter.drain()  # the next call continues after all of it
                delay = exc.retry_after
                if delay is not None and delay > MAX_RETRY_AFTER_SECONDS:
                    raise  # waiting that long helps nobody: the client hears it now
                if delay is None:
                    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (calls - 1))
                    delay *= random.uniform(0.5, 1.0)
                log.warning("provider call failed, retrying in %.2fs: %s", delay, exc.message,
                            extra=attempt.log_context())
                await asyncio.sleep(delay)
                continue
            except BaseException:  # cancelled, lost, timed out: the call did not end on its own
                metrics.record_provider_call(model.family, model.id, "aborted", time.monotonic() - call_started)
                raise
            metrics.record_provider_call(model.family, model.id, "ok", time.monotonic() - call_started)
            tail = stops.flush()
            if tail:
                await self._emit(attempt, tail)
            # What is not yet published goes out with the job's last events (one round trip).
            if stops.stopped:
                completion.finish_reason = "stop"
            return completion

    @staticmethod
    async def _unpublished(attempt: Attempt) -> list[tuple[int, str, str]]:
        """The token events still to publish, numbered after every published one; they go out
        with the attempt's last events (one round trip) and count as delivered from here on."""
        if attempt.emitter is None:
            return []
        texts = await attempt.emitter.close()
        events = token_events(attempt, texts)
        attempt.seq += len(texts)
        attempt.delivered.extend(texts)
        return events

    async def _emit(self, attempt: Attempt, text: str) -> None:
        if attempt.emitter is None:
            attempt.emitter = Emitter(self.publisher, attempt)
        await attempt.emitter.emit(text)

    async def _finish(self, attempt: Attempt, status: str, fields: dict[str, str], events,
                      prompt_tokens: int | None = None, completion_tokens: int | None = None) -> str:
        estimated = prompt_tokens is None
        if estimated:
            # The provider never reported usage (cancelled, failed, cut): count what subscribers
            # received, and the prompt at a typical 4 bytes per token.
            prompt_tokens = math.ceil(attempt.prompt_bytes / 4) if attempt.delivered else 0
            completion_tokens = len(attempt.delivered)
        attempt.usage = usage_record(attempt.spec, attempt.model_id, prompt_tokens, completion_tokens,
                                     attempt.started, estimated=estimated)
        if attempt.handle is not None:
            attempt.handle.owned = False  # the lease is released by the finish itself
        if not await self.store.finish(attempt.job_id, attempt.token, status, fields, events,
                                       attempt.account_id, attempt.usage, attempt.batch_id):
            log.warning("job lost before it could finish", extra=attempt.log_context())
            return "lost"
        metrics.record_finish(status, attempt.model_id, attempt.provider, attempt.usage)
        log.info("job %s", status, extra=attempt.log_context())
        return status

    async def _finish_succeeded(self, attempt: Attempt, completion: Completion) -> str:
        tokens = await self._unpublished(attempt)
        final = stream_chunk("", completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        body = completion_body(attempt.text, completion.finish_reason,
                               completion.prompt_tokens, completion.completion_tokens)
        return await self._finish(
            attempt, "succeeded", {"result": _dumps(body)},
            [*tokens, (attempt.seq + 1, TOKEN, _dumps(final)),
             (attempt.seq + 2, END, _dumps({"status": "succeeded"}))],
            completion.prompt_tokens, completion.completion_tokens,
        )

    async def _finish_cancelled(self, attempt: Attempt) -> str:
        tokens = await self._unpublished(attempt)
        return await self._finish(
            attempt, "cancelled", {},
            [*tokens, (attempt.seq + 1, END, _dumps({"status": "cancelled"}))],
        )

    async def _finish_failed(self, attempt: Attempt, code: str, message: str) -> str:
        tokens = await self._unpublished(attempt)
        error = _dumps({"code": code, "message": message})
        return await self._finish(attempt, "failed", {"error": error},
                                  [*tokens, (attempt.seq + 1, ERROR, error)])
