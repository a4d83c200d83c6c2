"""Where an attempt's provider calls go: a model's deployments, its account's fallback models, and
which of them are cooling down.

A model may be served by several deployments (keys, regions, providers: ``deployments`` in the
catalog). Calls are spread across them by weight, and a call that fails on one with a 429, a 5xx
or a timeout is made at once on the next. A deployment that fails at least
``CHATFLEET_FAILOVER_FAILURE_RATIO`` (50 %) of at least ``CHATFLEET_FAILOVER_MIN_CALLS`` (5) calls
in a window (``CHATFLEET_FAILOVER_WINDOW_SECONDS``) cools down for
``CHATFLEET_FAILOVER_COOLDOWN_SECONDS``: every worker sends it calls only when no other
deployment is left (``lua/deployment_health.lua``, in Redis). After every deployment of the model,
the account's fallback models for it (``fallback_models``, set with the admin API) are tried in
their order. A stream that already delivered tokens never switches: its next call goes where the
last one went, continuing after them.

A model with one deployment and no fallback costs nothing here: no Redis call is made.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import orjson

from shared import keys, webhooks
from shared.catalog import Catalog, DeploymentLimits, ModelSpec
from shared.scripts import Scripts
from shared.settings import Settings
from worker.providers.base import Provider, ProviderError


@dataclass
class Route:
    deployment: str
    spec: ModelSpec  # the model as this deployment serves it
    limits: DeploymentLimits
    provider: Provider | None = None
    unavailable: ProviderError | None = None  # why there is no provider

    @property
    def label(self) -> str:
        return f"{self.spec.id}@{self.deployment}"


class Failover:
    def __init__(self, redis, scripts: Scripts, catalog: Catalog, providers, settings: Settings):
        self.redis = redis
        self.scripts = scripts
        self.catalog = catalog
        self.providers = providers
        self.settings = settings

    def _routes_of(self, spec: ModelSpec) -> list[Route]:
        out = []
        for name, served, limits in self.catalog.routes(spec):
            route = Route(name, served, limits)
            try:
                route.provider = self.providers.for_deployment(name, served.family, limits)
            except ProviderError as exc:
                route.unavailable = exc  # its key is not set, or not for its host: tried last, and it says why
            out.append(route)
        return out

    async def routes(self, spec: ModelSpec) -> list[Route]:
        """The model's deployments, healthy ones first (in a weighted random order), those
        cooling down after them."""
        routes = self._routes_of(spec)
        if len(routes) == 1:
            return routes
        async with self.redis.pipeline(transaction=False) as pipe:  # each in its deployment's slot
            for r in routes:
                pipe.get(keys.deployment_cooldown(r.deployment))
            cooling = await pipe.execute()
        healthy = [r for r, c in zip(routes, cooling) if not c and r.provider is not None]
        rest = [r for r, c in zip(routes, cooling) if c or r.provider is None]
        ordered = []
        while healthy:
            weights = [max(r.limits.weight, 0.0) for r in healthy]
            pick = random.choices(healthy, weights=weights)[0] if sum(weights) > 0 else healthy[0]
            ordered.append(pick)
            healthy.remove(pick)
        return ordered + rest

    async def fallbacks(self, account_id: str, model_id: str) -> list[Route]:
        """The routes of the account's fallback models for ``model_id``, in their order."""
        raw = await self.redis.hget(keys.account(account_id), "fallback_models")
        names = orjson.loads(raw).get(model_id, []) if raw else []
        out: list[Route] = []
        for name in names:
            spec = self.catalog.get(name)
            if spec is not None and name != model_id:
                out.extend(await self.routes(spec))
        return out

    async def record(self, route: Route, ok: bool) -> None:
        """One call's outcome on a deployment shared with others (fleet-wide health)."""
        window = int(self.settings.failover_window_seconds)
        bucket = int(time.time() // window)
        cooling = await self.scripts.deployment_health(
            keys=[keys.deployment_health(route.deployment, str(bucket)), keys.deployment_cooldown(route.deployment)],
            args=[1 if ok else 0, window, self.settings.failover_min_calls, self.settings.failover_failure_ratio,
                  int(self.settings.failover_cooldown_seconds)],
        )
        if cooling == 1:  # it has just started to cool down: announced once (webhooks, never raises)
            models = [route.spec.id, *(m.id for m in self.catalog if route.deployment in m.deployments)]
            await webhooks.emit_cooldown(self.redis, route.deployment, models,
                                         self.settings.failover_cooldown_seconds, window)
