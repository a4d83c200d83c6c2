"""The provider calls of one attempt: stream each answer through the stop filter to the
subscribers, and call again after a retryable fault (``worker/retries.py``), each call
continuing after the text already delivered, so that subscribers never see text twice."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shared.catalog import ModelSpec
from worker import metrics
from worker.attempt import Attempt
from worker.providers.base import Completion, GenerationRequest, Provider, ProviderError, TextDelta
from worker.publishing import Publisher, emit
from worker.retries import may_retry, retry_delay
from worker.stops import StopFilter

log = logging.getLogger(__name__)


async def generate(attempt: Attempt, model: ModelSpec, provider: Provider, job_spec: dict[str, Any],
                   publisher: Publisher) -> Completion:
    """The completion of the attempt's last call; raises the ProviderError that ended it."""
    params = job_spec["params"]
    calls = 0
    while True:
        calls += 1
        stops = StopFilter(params.get("stop"))
        request = GenerationRequest(
            spec=model, messages=job_spec["messages"], prompt=job_spec.get("prompt"),
            params=params, continuation=attempt.text, continuation_events=len(attempt.delivered),
            job_id=attempt.job_id, account_id=attempt.account_id,
        )
        completion = None
        call_started = time.monotonic()
        first_text = True
        try:
            async for item in provider.stream(request):
                if isinstance(item, TextDelta):
                    if first_text and item.text:
                        first_text = False
                        metrics.PROVIDER_TTFT.labels(model.family, model.id).observe(time.monotonic() - call_started)
                    text = stops.feed(item.text)
                    if text:
                        await emit(publisher, attempt, text)
                else:
                    completion = item
            if completion is None:
                raise ProviderError("the provider's stream ended before it finished", code="stream_cut",
                                    retryable=True)
        except ProviderError as exc:
            metrics.record_provider_call(model.family, model.id, "error", time.monotonic() - call_started, exc.code)
            if not may_retry(exc, calls):
                raise
            if attempt.emitter is not None:
                # The next call continues after all of it (and a cancel or a lost lease that the
                # publish in flight learned of is raised here, whatever comes next).
                await attempt.emitter.drain()
            delay = retry_delay(exc, calls)
            if delay is None:
                raise
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
            await emit(publisher, attempt, tail)
        # What is not yet published goes out with the job's last events (one round trip).
        if stops.stopped:
            completion.finish_reason = "stop"
        return completion
