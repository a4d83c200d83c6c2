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


class Routes:
    """Where an attempt's calls go: the model's routes, then, once the last of them has failed,
    the account's fallback models that ``fits`` takes. Deployments' health is recorded only where
    there is somewhere else to go (``shared``)."""

    def __init__(self, routes: list[Route], failover: Failover | None, fits=lambda route: True):
        self.items = list(routes)
        self.failover = failover
        self.fits = fits
        self.loaded = failover is None  # fallbacks are loaded only with a failover
        self.shared = len(self.items) > 1
        self.index = 0

    @property
    def current(self) -> Route:
        return self.items[self.index]

    async def record(self, route: Route, ok: bool) -> None:
        if self.shared:
            assert self.failover is not None  # several routes are the failover's, given with it
            await self.failover.record(route, ok)

    async def move_on(self, attempt: Attempt) -> bool:
        """To the next route (loading the fallbacks at the last); False when there is none."""
        if self.index + 1 == len(self.items) and not self.loaded:
            assert self.failover is not None  # not loaded: there is a failover
            self.loaded = True
            fallbacks = [r for r in await self.failover.fallbacks(attempt.account_id, attempt.model_id)
                         if self.fits(r) and attempt.may_fall_back_to(r.spec)]
            self.items += fallbacks
            self.shared = self.shared or bool(fallbacks)
        if self.index + 1 < len(self.items):
            self.index += 1
            return True
        return False


def unavailable(route: Route, shared: bool) -> ProviderError:
    why = route.unavailable.message if route.unavailable else f"no adapter for the {route.spec.family} family"
    return ProviderError(why, code="model_unavailable", retryable=shared)


async def wait_to_retry(exc: ProviderError, calls: int, attempt: Attempt, what: str) -> None:
    """Wait before the same call is made again; raises ``exc`` if it is not to be made again."""
    if not may_retry(exc, calls):
        raise exc
    delay = retry_delay(exc, calls)
    if delay is None:
        raise exc
    log.warning("%s call failed, retrying in %.2fs: %s", what, delay, exc.message, extra=attempt.log_context())
    await asyncio.sleep(delay)


async def generate(attempt: Attempt, routes: list[Route], job: JobSpec, publisher: Publisher,
                   failover: Failover | None = None) -> tuple[Completion, Route]:
    """The completion of the attempt's last call and the route that served it; raises the
    ProviderError that ended the attempt."""
    if attempt.tool_pieces:
        # An earlier attempt delivered the answer's tool calls, its last part, and was lost
        # before it could finish the job: the answer is whole; it is billed as counted.
        return Completion("tool_calls", attempt.typical_prompt_tokens, len(attempt.delivered)), routes[0]
    where = Routes(routes, failover)
    calls = 0
    while True:
        route = where.current
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
                raise unavailable(route, where.shared)
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
            if exc.retryable:
                await where.record(route, False)
            if attempt.emitter is not None:
                # What the provider sent before the fault is published before deciding where the
                # next call goes (tokens still in flight count as delivered), and the next call
                # continues after all of it. A cancel or a lost lease that the publish in flight
                # learned of is raised here, whatever comes next.
                await attempt.emitter.drain()
            if exc.retryable and not attempt.delivered and await where.move_on(attempt):
                calls = 0
                log.warning("provider call failed on %s, moving to %s: %s", route.label, where.current.label,
                            exc.message, extra=attempt.log_context())
                continue
            await wait_to_retry(exc, calls, attempt, "provider")
            continue
        except BaseException:  # cancelled, lost, timed out: the call did not end on its own
            metrics.record_provider_call(model.family, model.id, "aborted", time.monotonic() - call_started)
            raise
        metrics.record_provider_call(model.family, model.id, "ok", time.monotonic() - call_started)
        await where.record(route, True)
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
    embed = job.embed
    assert embed is not None  # an embedding job
    first = routes[0].spec
    # Fallbacks: embedding models whose vectors have the job's length (a client's index takes no other).
    where = Routes(routes, failover, lambda r: r.spec.kind == "embedding" and (
        embed.dimensions is not None or r.spec.dimensions == first.dimensions))
    calls = 0
    while True:
        route = where.current
        model = route.spec
        calls += 1
        request = GenerationRequest(model=model, job=job, job_id=attempt.job_id, account_id=attempt.account_id)
        call_started = time.monotonic()
        try:
            if route.provider is None:
                raise unavailable(route, where.shared)
            result = await route.provider.embed(request)
            if len(result.vectors) != len(embed.inputs):
                raise ProviderError(f"the provider answered {len(result.vectors)} embeddings for "
                                    f"{len(embed.inputs)} inputs", code="upstream_invalid", retryable=True)
        except ProviderError as exc:
            metrics.record_provider_call(model.family, model.id, "error", time.monotonic() - call_started, exc.code)
            if exc.retryable:
                await where.record(route, False)
                if await where.move_on(attempt):
                    calls = 0
                    log.warning("embedding call failed on %s, moving to %s: %s", route.label, where.current.label,
                                exc.message, extra=attempt.log_context())
                    continue
            await wait_to_retry(exc, calls, attempt, "embedding")
            continue
        except BaseException:
            metrics.record_provider_call(model.family, model.id, "aborted", time.monotonic() - call_started)
            raise
        metrics.record_provider_call(model.family, model.id, "ok", time.monotonic() - call_started)
        await where.record(route, True)
        return result, route
