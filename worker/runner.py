"""One attempt at one job: claim it, call the provider, publish tokens, finish it.

Everything a provider does wrong is handled here, once, for every adapter: retryable faults
(429, 5xx, timeouts, cut streams) are retried with exponential backoff and jitter, honouring
``Retry-After``, within a bounded number of calls and the job's time limit. A retry continues
after the text already delivered (the adapter is told what it was), so subscribers never see
text twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import orjson

from shared.catalog import Catalog, ModelSpec
from shared.events import read_events
from shared.jobs import END, ERROR, TOKEN, JobStore
from shared.schemas import completion_body, stream_chunk
from shared.settings import Settings
from worker.providers.base import Completion, GenerationRequest, Provider, ProviderError, TextDelta
from worker.stops import StopFilter

log = logging.getLogger(__name__)

MAX_PROVIDER_CALLS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 20.0


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

    @property
    def text(self) -> str:
        return "".join(self.delivered)


def chunk_text(data: str) -> str:
    return orjson.loads(data)["chat_completion"]["message"]["content"]


def _dumps(value) -> str:
    return orjson.dumps(value).decode()


class JobRunner:
    def __init__(self, store: JobStore, catalog: Catalog, providers: dict[str, Provider], settings: Settings):
        self.store = store
        self.catalog = catalog
        self.providers = providers
        self.settings = settings

    async def run(self, job_id: str, token: str, cancel_reason) -> str:
        """Run one attempt; returns what happened (for logs and tests)."""
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

        record = await self.store.get(job_id)
        job_spec = orjson.loads(record["spec"])
        prior = await read_events(self.store.redis, job_id)
        attempt = Attempt(job_id, token, prior[-1].seq if prior else 0,
                          [chunk_text(e.data) for e in prior if e.type == TOKEN])
        log.info("job started", extra={"job_id": job_id, "account_id": record.get("account_id"),
                                       "model": job_spec["model"], "attempt": claim.attempts})
        try:
            model = self.catalog.get(job_spec["model"])
            if model is None:
                raise ProviderError(f"model {job_spec['model']!r} is no longer in the catalog",
                                    code="model_unavailable")
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
            reason = cancel_reason()
            if reason == "cancel":
                asyncio.current_task().uncancel()
                return await self._finish_cancelled(attempt)
            raise  # lost ownership or shutdown: another attempt takes over
        except LostOwnership:
            log.warning("job lost to another attempt", extra={"job_id": job_id})
            return "lost"
        except ProviderError as exc:
            return await self._finish_failed(attempt, exc.code, exc.message)
        except Exception:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})
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
            try:
                async for item in provider.stream(request):
                    if isinstance(item, TextDelta):
                        text = stops.feed(item.text)
                        if text:
                            await self._emit(attempt, text)
                    else:
                        completion = item
                if completion is None:
                    raise ProviderError("the provider's stream ended before it finished",
                                        code="stream_cut", retryable=True)
            except ProviderError as exc:
                if not exc.retryable or calls >= MAX_PROVIDER_CALLS:
                    raise
                delay = exc.retry_after
                if delay is None:
                    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (calls - 1))
                    delay *= random.uniform(0.5, 1.0)
                log.warning("provider call failed, retrying in %.2fs: %s", delay, exc.message,
                            extra={"job_id": attempt.job_id, "model": model.id, "provider": model.family})
                await asyncio.sleep(delay)
                continue
            tail = stops.flush()
            if tail:
                await self._emit(attempt, tail)
            if stops.stopped:
                completion.finish_reason = "stop"
            return completion

    async def _emit(self, attempt: Attempt, text: str) -> None:
        attempt.seq += 1
        outcome = await self.store.publish(
            attempt.job_id, attempt.token, [(attempt.seq, TOKEN, _dumps(stream_chunk(text)))]
        )
        if outcome < 0:
            raise LostOwnership()
        attempt.delivered.append(text)
        if outcome == 1:
            raise JobCancelled()

    async def _finish(self, attempt: Attempt, status: str, fields: dict[str, str], events) -> str:
        if not await self.store.finish(attempt.job_id, attempt.token, status, fields, events):
            log.warning("job lost before it could finish", extra={"job_id": attempt.job_id})
            return "lost"
        log.info("job %s", status, extra={"job_id": attempt.job_id})
        return status

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return _dumps({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})

    async def _finish_succeeded(self, attempt: Attempt, completion: Completion) -> str:
        final = stream_chunk("", completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
        body = completion_body(attempt.text, completion.finish_reason,
                               completion.prompt_tokens, completion.completion_tokens)
        return await self._finish(
            attempt, "succeeded",
            {"result": _dumps(body), "usage": self._usage(completion.prompt_tokens, completion.completion_tokens)},
            [(attempt.seq + 1, TOKEN, _dumps(final)),
             (attempt.seq + 2, END, _dumps({"status": "succeeded"}))],
        )

    async def _finish_cancelled(self, attempt: Attempt) -> str:
        return await self._finish(
            attempt, "cancelled", {},
            [(attempt.seq + 1, END, _dumps({"status": "cancelled"}))],
        )

    async def _finish_failed(self, attempt: Attempt, code: str, message: str) -> str:
        error = _dumps({"code": code, "message": message})
        return await self._finish(attempt, "failed", {"error": error}, [(attempt.seq + 1, ERROR, error)])
