"""One attempt at one job: claim it, admit it under its limits, make its provider calls
(``worker/generation.py``), finish it.

Every way an attempt can end is decided here, once: succeeded, failed (with the provider's code),
cancelled, parked while its account is over a limit, handed back at shutdown, or left to be
resumed when its lease was lost or Redis went away. Each ending is one script, fenced by the
attempt's lease, that also writes the job's usage.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.exceptions import RedisError

from shared.catalog import Catalog
from shared.events import END, ERROR, TOKEN
from shared.jobs import JobStore
from shared.jobspec import JobSpec, UnreadableSpec
from shared.logs import redact
from shared.results import completion_body, embedding_body, stream_chunk
from shared.settings import Settings
from shared.usage import record as usage_record
from worker import metrics
from worker.attempt import Attempt, RunningJob
from worker.failover import Failover, Route
from worker.generation import embed, generate
from worker.limits import Admission, Limiter, announce, worst_cost_nanousd
from worker.providers.base import Completion, Embeddings, Provider, ProviderError
from worker.publishing import JobCancelled, LostOwnership, Publisher, chunk_piece, dumps, unpublished

log = logging.getLogger(__name__)


def key_models(record: dict[str, str]) -> frozenset[str] | None:
    """The models the job's API key may use (None: every model)."""
    raw = record.get("key_models")
    return frozenset(orjson.loads(raw)) if raw else None


class StateStoreUnavailable(Exception):
    """The attempt could not even claim its job: its message is given back (``worker/tasks.py``)."""


class JobRunner:
    def __init__(self, store: JobStore, catalog: Catalog, providers: dict[str, Provider], settings: Settings):
        self.store = store
        self.limiter = Limiter(store.redis, settings, store.channel)
        self.publisher = Publisher(store)
        self.catalog = catalog
        self.providers = providers
        self.settings = settings
        self.failover = Failover(store.redis, store.scripts, catalog, providers, settings)
        self._tasks: set[asyncio.Task] = set()  # work beside the attempts (fair share's hand-outs)

    async def run(self, job_id: str, token: str, running: RunningJob) -> str:
        """Run one attempt, timed (``chatfleet_job_attempt_duration_seconds``, by outcome)."""
        started = time.monotonic()
        outcome = "interrupted"
        try:
            outcome = await self._run(job_id, token, running)
            return outcome
        finally:
            metrics.JOB_ATTEMPT_DURATION.labels(outcome).observe(time.monotonic() - started)

    async def _run(self, job_id: str, token: str, running: RunningJob) -> str:
        """Run one attempt; returns what happened (for logs and tests). ``running`` is the
        runtime's handle on the attempt: ``reason`` says why it was cancelled, and ``limits``
        is set here so that the runtime renews the attempt's concurrency leases."""
        try:
            claim = await self.store.claim(job_id, token)
        except RedisError as exc:
            # Nothing ran; the job is still queued. Its message must go back to the queue, not
            # be acknowledged as a failed task: RabbitMQ would then hold it no more, while the
            # job's record still says it does, and no sweep would ever queue it again.
            raise StateStoreUnavailable(f"could not claim job {job_id}: {exc}") from exc
        if claim.outcome == "exhausted":
            await self.store.fail_unclaimed(
                job_id, "redelivery_limit",
                f"the job was started {claim.attempts} times without finishing "
                "(each time its worker was lost); it will not be retried again",
                catalog=self.catalog,
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

    async def _run_claimed(self, job_id: str, token: str, running: RunningJob, claim) -> str:
        record = claim.record
        account_id = record["account_id"]
        prior = claim.events
        attempt = Attempt(job_id, token, prior[-1].seq if prior else 0,
                          [chunk_piece(e.data) for e in prior if e.type == TOKEN],
                          account_id=account_id, model_id=record.get("model", ""),
                          started=float(record.get("started_at") or time.time()),  # refreshed at admission
                          submitted_at=float(record["created_at"]), batch_id=record.get("batch_id", ""),
                          key_id=record.get("key_id", ""), key_models=key_models(record))
        attempt.number = claim.attempts
        try:
            job = JobSpec.load(record["spec"], self.catalog, self.settings.default_completion_reservation)
        except UnreadableSpec as exc:  # every attempt would fail alike: end it now, with why
            log.error("%s", exc, extra=attempt.log_context())
            outcome = await self._finish_failed(attempt, "internal_error", "the job's request cannot be read")
            await self._pass_turn(attempt, record.get("queue", ""))
            return outcome
        attempt.model_id, attempt.typical_prompt_tokens = job.model, job.typical_prompt_tokens
        context = {"job_id": job_id, "account_id": account_id, "model": job.model, "attempt": claim.attempts}
        model = self.catalog.get(job.model)
        if model is None:
            outcome = await self._finish_failed(attempt, "model_unavailable",
                                                f"model {job.model!r} is no longer in the catalog")
            await self._pass_turn(attempt, record.get("queue", ""))
            return outcome
        attempt.spec = model
        context["provider"] = model.family
        attempt.handle = running

        try:
            routes = await self.failover.routes(model)
            admission = await self._admit(attempt, routes[0], job, record)
        except RedisError as exc:
            # Fail closed: nothing runs without admission. The lease lapses and the job is
            # handed out again once Redis answers.
            log.error("admission impossible, Redis unavailable: %s", exc, extra=context)
            return "redis_unavailable"
        metrics.record_admission(model.id, admission.outcome, admission.reason)
        if admission.released:  # beside the attempt, which need not wait for it
            self._background(self._release(attempt, record.get("queue", ""), admission.released))
        if admission.outcome in ("too_large", "over_budget"):
            if admission.crossing is not None:
                await announce(self.store.redis, admission.crossing)
            code = "limit_exceeded" if admission.outcome == "too_large" else "budget_exceeded"
            outcome = await self._finish_failed(attempt, code, admission.reason)
            await self._pass_turn(attempt)
            return outcome
        if admission.outcome == "waiting":
            running.owned = False
            assert admission.retry_at is not None  # a waiting admission says when to try again
            parked = await self.store.park(job_id, token, attempt.seq + 1, admission.retry_at, admission.reason)
            if parked == "parked":
                log.info("job throttled: %s", admission.reason, extra=context)
                return "throttled"
            if parked == "cancel":  # admission put it in the account's line: leave it
                outcome = await self._finish_cancelled(attempt)
                await self._pass_turn(attempt)
                return outcome
            return "lost"
        deployment = routes[0].deployment  # admitted under the first route's limits
        if admission.budgeted:
            # What the budgets hold for the job bounds what a fallback model may cost.
            held = worst_cost_nanousd(model, job)
            attempt.affordable = lambda spec: worst_cost_nanousd(spec, job) <= held
        if admission.holds:
            running.limits = (account_id, model.id, deployment, attempt.key_id)
        if not record.get("started_at"):
            attempt.started = time.time()
        if admission.next_job:
            await self.store.requeue_waiting(admission.next_job, account_id)

        log.info("job started", extra={**context, "provider": model.family})
        with metrics.JOBS_RUNNING.track_inprogress():
            outcome = await self._execute(attempt, routes, job, running)
        running.limits = None
        if not admission.holds:
            return outcome  # no limit applied: nothing was reserved, nothing to release
        # The budget hold is settled by the attempt that ended the job; any other (lost, handed
        # back) leaves it to the job's next attempt, or to the sweeper.
        ended = outcome in ("succeeded", "failed", "cancelled")
        try:
            settled = await self.limiter.settle(
                job_id=job_id, account_id=account_id, model=model.id, deployment=deployment,
                tokens=attempt.usage.prompt_tokens + attempt.usage.completion_tokens if attempt.usage else 0,
                deployment_holds=admission.deployment_holds, key_id=attempt.key_id,
                cost_nanousd=attempt.usage.cost_nanousd if attempt.usage and ended else None,
            )
            if settled.next_job:
                await self.store.requeue_waiting(settled.next_job, account_id)
            for crossing in settled.crossings:
                await announce(self.store.redis, crossing)
        except RedisError as exc:  # the leases lapse on their own, the sweeper settles the budget
            log.warning("could not settle rate limits: %s", exc, extra=context)
        return outcome

    def _background(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, attempt: Attempt, queue: str, job_ids: list[str]) -> None:
        """Queue the account's jobs that fair share held back and this admission handed out."""
        try:
            await self.store.release(queue, job_ids)
        except RedisError as exc:  # the sweeper releases them
            log.warning("could not hand out held-back jobs: %s", exc, extra=attempt.log_context())

    async def _pass_turn(self, attempt: Attempt, queue: str = "") -> None:
        """A job that ends before admission may be first in its account's line (it waited
        earlier): the next one gets its turn now, not when the line's watchdog fires. Ended
        before admission, it also gives back its place in its account's share of ``queue``."""
        try:
            if queue:
                await self.store.leave_queue(attempt.account_id, queue, attempt.job_id)
            await self.store.requeue_waiting(attempt.job_id, attempt.account_id)
        except RedisError as exc:  # the watchdog still wakes the line
            log.warning("could not pass the turn on: %s", exc, extra=attempt.log_context())

    async def _admit(self, attempt: Attempt, route: Route, job: JobSpec, record: dict[str, str]) -> Admission:
        limits = route.limits
        assert attempt.spec is not None  # the model, known before admission
        return await self.limiter.admit(
            job_id=attempt.job_id, account_id=attempt.account_id, model=job.model,
            deployment=route.deployment, deployment_rpm=limits.rpm, deployment_tpm=limits.tpm,
            tokens=job.reserved_tokens, submitted_at=attempt.submitted_at, key_id=attempt.key_id,
            cost_nanousd=worst_cost_nanousd(attempt.spec, job),
            priority=record.get("priority") or ("low" if attempt.batch_id else "default"),
            queue=record.get("queue", ""), attempt=attempt.number,
        )

    async def _execute(self, attempt: Attempt, routes: list[Route], job: JobSpec, running: RunningJob) -> str:
        job_id = attempt.job_id
        try:
            try:
                async with asyncio.timeout(self.settings.job_time_limit_seconds):
                    if job.embed is not None:
                        embeddings, route = await embed(attempt, routes, job, self.failover)
                        attempt.serve(route)
                        return await self._finish_embedded(attempt, embeddings)
                    completion, route = await generate(attempt, routes, job, self.publisher, self.failover)
                    attempt.serve(route)
            except TimeoutError:
                raise ProviderError(
                    f"the job ran longer than its limit of {self.settings.job_time_limit_seconds:g} s",
                    code="timeout",
                ) from None
        except JobCancelled:
            return await self._finish_cancelled(attempt)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None  # the job's own task, cancelled
            if running.reason == "cancel":
                task.uncancel()
                return await self._finish_cancelled(attempt)
            if running.reason == "shutdown":
                # The grace period is over: hand the job to another worker now rather than
                # let its lease lapse. What was delivered stays delivered; the next attempt
                # continues after it, and only the attempt that finishes records usage.
                task.uncancel()
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

    async def _finish(self, attempt: Attempt, status: str, fields: dict[str, str], events,
                      prompt_tokens: int | None = None, completion_tokens: int | None = None) -> str:
        estimated = prompt_tokens is None
        if estimated:
            # The provider never reported usage (cancelled, failed, cut): count what subscribers
            # received, and the prompt at its typical count.
            prompt_tokens = attempt.typical_prompt_tokens if attempt.delivered else 0
            completion_tokens = len(attempt.delivered)
        assert prompt_tokens is not None and completion_tokens is not None  # given together, or counted here
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
        tokens = await unpublished(attempt)
        calls = attempt.tool_calls()
        if calls and completion.finish_reason == "stop":  # some families finish a call as any answer
            completion.finish_reason = "tool_calls"
        final = stream_chunk("", completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        body = completion_body(attempt.text, completion.finish_reason,
                               completion.prompt_tokens, completion.completion_tokens, calls)
        return await self._finish(
            attempt, "succeeded", {"result": dumps(body), "served_by": attempt.served_by},
            [*tokens, (attempt.seq + 1, TOKEN, dumps(final)),
             (attempt.seq + 2, END, dumps({"status": "succeeded"}))],
            completion.prompt_tokens, completion.completion_tokens,
        )

    async def _finish_embedded(self, attempt: Attempt, embeddings: Embeddings) -> str:
        body = embedding_body(embeddings.vectors, embeddings.prompt_tokens)
        return await self._finish(
            attempt, "succeeded", {"result": dumps(body), "served_by": attempt.served_by},
            [(attempt.seq + 1, END, dumps({"status": "succeeded"}))], embeddings.prompt_tokens, 0)

    async def _finish_cancelled(self, attempt: Attempt) -> str:
        tokens = await unpublished(attempt)
        return await self._finish(
            attempt, "cancelled", {},
            [*tokens, (attempt.seq + 1, END, dumps({"status": "cancelled"}))],
        )

    async def _finish_failed(self, attempt: Attempt, code: str, message: str) -> str:
        tokens = await unpublished(attempt)
        # Whatever built the message, a configured secret never reaches the job record or a client.
        error = dumps({"code": code, "message": redact(message)})
        return await self._finish(attempt, "failed", {"error": error},
                                  [*tokens, (attempt.seq + 1, ERROR, error)])
