"""The provider calls of one attempt: stream each answer through the stop filter to the
subscribers, and call again after a retryable fault, each call continuing after the text already
delivered, so that subscribers never see text twice.

Where the next call goes is ``worker/failover.py``'s: while nothing was delivered, a retryable
fault moves the attempt at once to the next of its routes (another deployment of the model, then
the account's fallback models); otherwise, and on the last route, the call is made again where
the last one went, after the wait ``worker/retries.py`` decides.

Tool calls are delivered whole: their pieces are held until the call that made them has
finished, then published together, as one event. No family can continue a tool call cut
halfway, so a call made again after a fault makes its tool calls afresh, none of which a
subscriber has seen a piece of; and once they are delivered, they are the answer's last part, so
a later attempt (after a lost worker) has nothing left to ask for.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.jobspec import JobSpec
from shared.results import whole_calls
from worker import metrics
from worker.attempt import Attempt
from worker.failover import Failover, Route
from worker.providers.base import Completion, Embeddings, GenerationRequest, ProviderError, TextDelta, ToolCallDelta
from worker.publishing import Publisher, emit
from worker.retries import may_retry, retry_delay
from worker.stops import StopFilter

log = logging.getLogger(__name__)


async def generate(attempt: Attempt, routes: list[Route], job: JobSpec, publisher: Publisher,
                   failover: Failover | None = None) -> tuple[Completion, Route]:
    """The completion of the attempt's last call and the route that served it; raises the
    ProviderError that ended the attempt."""
    routes = list(routes)
    shared = len(routes) > 1  # deployments' health is tracked where there is somewhere else to go
    fallbacks_loaded = failover is None
    index, calls = 0, 0
    if attempt.tool_pieces:
        # An earlier attempt delivered the answer's tool calls, its last part, and was lost
        # before it could finish the job: the answer is whole; it is billed as counted.
        return Completion("tool_calls", attempt.typical_prompt_tokens, len(attempt.delivered)), routes[0]
    while True:
        route = routes[index]
        model = route.spec
        calls += 1
        stops = StopFilter(job.params.stop)
        request = GenerationRequest(
            model=model, job=job, continuation=attempt.text, continuation_events=len(attempt.delivered),
            job_id=attempt.job_id, account_id=attempt.account_id,
        )
        completion = None
        call_started = time.monotonic()
        first_text = True
        held: list[ToolCallDelta] = []
        try:
            if route.provider is None:
                why = route.unavailable.message if route.unavailable else f"no adapter for the {model.family} family"
                raise ProviderError(why, code="model_unavailable", retryable=shared)
            async for item in route.provider.stream(request):
                if isinstance(item, TextDelta):
                    if first_text and item.text:
                        first_text = False
                        metrics.PROVIDER_TTFT.labels(model.family, model.id).observe(time.monotonic() - call_started)
                    text = stops.feed(item.text)
                    if text:
                        await emit(publisher, attempt, text)
                elif isinstance(item, ToolCallDelta):
                    held.append(item)
                else:
                    completion = item
            if completion is None:
                raise ProviderError("the provider's stream ended before it finished", code="stream_cut",
                                    retryable=True)
        except ProviderError as exc:
            metrics.record_provider_call(model.family, model.id, "error", time.monotonic() - call_started, exc.code)
            if shared and exc.retryable:
                assert failover is not None  # several routes are the failover's, given with it
                await failover.record(route, False)
            if attempt.emitter is not None:
                # What the provider sent before the fault is published before deciding where the
                # next call goes (tokens still in flight count as delivered), and the next call
                # continues after all of it. A cancel or a lost lease that the publish in flight
                # learned of is raised here, whatever comes next.
                await attempt.emitter.drain()
            if exc.retryable and not attempt.delivered:
                if index + 1 == len(routes) and not fallbacks_loaded:
                    assert failover is not None  # fallbacks are left to load only with a failover
                    fallbacks_loaded = True
                    fallbacks = await failover.fallbacks(attempt.account_id, attempt.model_id)
                    routes += fallbacks
                    shared = shared or bool(fallbacks)
                if index + 1 < len(routes):
                    index, calls = index + 1, 0
                    log.warning("provider call failed on %s, moving to %s: %s", route.label, routes[index].label,
                                exc.message, extra=attempt.log_context())
                    continue
            if not may_retry(exc, calls):
                raise
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
        if shared:
            assert failover is not None  # several routes are the failover's, given with it
            await failover.record(route, True)
        tail = stops.flush()
        if tail:
            await emit(publisher, attempt, tail)
        if held and not stops.stopped:
            if first_text:
                metrics.PROVIDER_TTFT.labels(model.family, model.id).observe(time.monotonic() - call_started)
            await emit(publisher, attempt, whole_calls(held))
        # What is not yet published goes out with the job's last events (one round trip).
        if stops.stopped:
            completion.finish_reason = "stop"
        return completion, route


async def embed(attempt: Attempt, routes: list[Route], job: JobSpec,
                failover: Failover | None = None) -> tuple[Embeddings, Route]:
    """An embedding job's call and the route that served it. Nothing is streamed, so a retryable
    fault moves the call to the next route at once (another deployment, then the account's
    fallbacks that are embedding models); on the last, it is made again after the wait
    ``worker/retries.py`` decides."""
    assert job.embed is not None  # an embedding job
    routes = list(routes)
    shared = len(routes) > 1
    fallbacks_loaded = failover is None
    index, calls = 0, 0
    while True:
        route = routes[index]
        model = route.spec
        calls += 1
        request = GenerationRequest(model=model, job=job, job_id=attempt.job_id, account_id=attempt.account_id)
        call_started = time.monotonic()
        try:
            if route.provider is None:
                why = route.unavailable.message if route.unavailable else f"no adapter for the {model.family} family"
                raise ProviderError(why, code="model_unavailable", retryable=shared)
            result = await route.provider.embed(request)
            if len(result.vectors) != len(job.embed.inputs):
                raise ProviderError(f"the provider answered {len(result.vectors)} embeddings for "
                                    f"{len(job.embed.inputs)} inputs", code="upstream_invalid", retryable=True)
        except ProviderError as exc:
            metrics.record_provider_call(model.family, model.id, "error", time.monotonic() - call_started, exc.code)
            if shared and exc.retryable:
                assert failover is not None  # several routes are the failover's, given with it
                await failover.record(route, False)
            if exc.retryable:
                if index + 1 == len(routes) and not fallbacks_loaded:
                    assert failover is not None  # fallbacks are left to load only with a failover
                    fallbacks_loaded = True
                    # Only models whose vectors have the job's length: a client's index takes no other.
                    fallbacks = [r for r in await failover.fallbacks(attempt.account_id, attempt.model_id)
                                 if r.spec.kind == "embedding" and (job.embed.dimensions is not None
                                                                   or r.spec.dimensions == model.dimensions)]
                    routes += fallbacks
                    shared = shared or bool(fallbacks)
                if index + 1 < len(routes):
                    index, calls = index + 1, 0
                    log.warning("embedding call failed on %s, moving to %s: %s", route.label, routes[index].label,
                                exc.message, extra=attempt.log_context())
                    continue
            if not may_retry(exc, calls):
                raise
            delay = retry_delay(exc, calls)
            if delay is None:
                raise
            log.warning("embedding call failed, retrying in %.2fs: %s", delay, exc.message,
                        extra=attempt.log_context())
            await asyncio.sleep(delay)
            continue
        except BaseException:
            metrics.record_provider_call(model.family, model.id, "aborted", time.monotonic() - call_started)
            raise
        metrics.record_provider_call(model.family, model.id, "ok", time.monotonic() - call_started)
        if shared:
            assert failover is not None  # several routes are the failover's, given with it
            await failover.record(route, True)
        return result, route
