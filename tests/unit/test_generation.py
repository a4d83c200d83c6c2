"""The provider calls of one attempt (worker/generation.py) and the retry policy they follow."""

import asyncio

import pytest

from shared.catalog import DeploymentLimits, get_catalog
from shared.jobspec import JobSpec, Sampling, Turn
from shared.results import ToolCallPiece
from worker.attempt import Attempt
from worker.failover import Route
from worker.generation import generate
from worker.providers.base import Completion, Provider, ProviderError, TextDelta, ToolCallDelta
from worker.publishing import JobCancelled
from worker.retries import MAX_PROVIDER_CALLS, may_retry, retry_delay

SPEC = JobSpec(model="gpt-4o", messages=(Turn("user", "hi"),), params=Sampling(temperature=0.2, max_tokens=16),
               prompt_bytes=2)


class Scripted(Provider):
    """Each call: a text delta, then the next of ``errors`` (or a completion when none is left)."""
    family = "openai"

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    async def stream(self, request):
        self.calls += 1
        yield TextDelta(f"t{self.calls}")
        if self.errors:
            raise self.errors.pop(0)
        yield Completion("stop", 1, self.calls)


class Publisher:
    def __init__(self, answer: int):
        self.answer = answer  # 0: published; 1: a cancel was requested
        self.events = []

    async def publish(self, job_id, token, events):
        self.events.extend(events)
        return self.answer


def run(provider, publisher):
    attempt = Attempt("job_1", "token", 0, account_id="acct", model_id="gpt-4o")
    route = Route("openai", get_catalog().get("gpt-4o"), DeploymentLimits(), provider)

    async def go():
        completion, served = await generate(attempt, [route], SPEC, publisher)
        assert served is route
        if attempt.emitter is not None:
            await attempt.emitter.drain()
        return completion

    return asyncio.run(go()), attempt


def rate_limited(retry_after=None):
    return ProviderError("slow down", code="upstream_rate_limited", retryable=True, retry_after=retry_after)


def test_a_retryable_fault_is_retried_after_what_was_delivered():
    provider = Scripted([rate_limited(retry_after=0)])
    completion, attempt = run(provider, Publisher(0))
    assert provider.calls == 2 and completion.completion_tokens == 2
    assert attempt.delivered == ["t1", "t2"]


def test_a_cancel_seen_by_the_last_publish_wins_over_a_retry_after_too_long_to_wait():
    # The upstream asks for a wait beyond what is worth it; meanwhile the job was cancelled:
    # the attempt ends cancelled, as it would have without the fault.
    with pytest.raises(JobCancelled):
        run(Scripted([rate_limited(retry_after=120)]), Publisher(1))


def test_a_retry_after_too_long_to_wait_is_the_clients_fault_to_hear():
    with pytest.raises(ProviderError) as caught:
        run(Scripted([rate_limited(retry_after=120)]), Publisher(0))
    assert caught.value.code == "upstream_rate_limited"



class SlowPublisher(Publisher):
    """A publish that takes a while to land: the provider's fault arrives while it is in flight."""

    async def publish(self, job_id, token, events):
        await asyncio.sleep(0.05)
        return await super().publish(job_id, token, events)


class NoFallbacks:
    def __init__(self):
        self.recorded = []

    async def record(self, route, ok):
        self.recorded.append((route.deployment, ok))

    async def fallbacks(self, account_id, model_id):
        return []


def test_tokens_still_being_published_when_the_stream_is_cut_keep_the_attempt_where_it_was():
    # The cut comes while the first token's publish is in flight: that token is delivered all
    # the same, so the next call goes to the same deployment and continues after it, and the
    # other deployment (which would start the answer again) is never called.
    first, other = Scripted([ProviderError("cut", code="stream_cut", retryable=True)]), Scripted([])
    spec = get_catalog().get("gpt-4o")
    routes = [Route("first", spec, DeploymentLimits(), first), Route("other", spec, DeploymentLimits(), other)]
    attempt = Attempt("job_1", "token", 0, account_id="acct", model_id="gpt-4o")
    publisher, failover = SlowPublisher(0), NoFallbacks()

    async def go():
        completion, served = await generate(attempt, routes, SPEC, publisher, failover)
        await attempt.emitter.drain()
        return completion, served

    completion, served = asyncio.run(go())
    assert served is routes[0] and other.calls == 0 and first.calls == 2
    assert attempt.delivered == ["t1", "t2"] and [seq for seq, _, _ in publisher.events] == [1, 2]
    assert failover.recorded == [("first", False), ("first", True)]


def test_the_policy():
    assert may_retry(rate_limited(), 1) and not may_retry(rate_limited(), MAX_PROVIDER_CALLS)
    assert not may_retry(ProviderError("no", code="upstream_rejected"), 1)
    assert retry_delay(rate_limited(retry_after=2), 1) == 2
    assert retry_delay(rate_limited(retry_after=61), 1) is None
    assert 0.25 <= retry_delay(rate_limited(), 1) <= 0.5 and 1.0 <= retry_delay(rate_limited(), 3) <= 2.0


class ToolScripted(Provider):
    """Each call: some text, a tool call's first piece, then the next of ``errors`` (or the rest
    of the call and a completion when none is left)."""
    family = "openai"

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    async def stream(self, request):
        self.calls += 1
        if not request.continuation:
            yield TextDelta("let me look")
        yield ToolCallDelta(0, "", f"call_{self.calls}", "get_weather")
        yield ToolCallDelta(0, '{"city": ')
        if self.errors:
            raise self.errors.pop(0)
        yield ToolCallDelta(0, '"Paris"}')
        yield Completion("tool_calls", 1, 3)


def test_a_tool_call_is_delivered_whole_after_its_call_ended_and_a_fault_before_that_remakes_it():
    provider = ToolScripted([rate_limited(retry_after=0)])
    completion, attempt = run(provider, Publisher(0))
    assert provider.calls == 2 and completion.finish_reason == "tool_calls"
    # The cut call's pieces were never delivered: the one call subscribers have is the second's.
    assert attempt.text == "let me look"
    assert attempt.tool_calls() == [{"id": "call_2", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


def test_an_attempt_after_tool_calls_were_delivered_calls_no_provider_again():
    provider = ToolScripted([])
    attempt = Attempt("job_1", "token", 2, [(ToolCallPiece(0, "{}", "call_1", "f"),)], account_id="acct",
                      model_id="gpt-4o")
    route = Route("openai", get_catalog().get("gpt-4o"), DeploymentLimits(), provider)
    completion, _ = asyncio.run(generate(attempt, [route], SPEC, Publisher(0)))
    assert provider.calls == 0 and completion.finish_reason == "tool_calls"
