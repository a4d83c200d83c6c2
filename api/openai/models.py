"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models of the catalog this fleet can serve for
the caller (its provider configured, and not closed to the account by a limit of 0)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter

from api.deps import CurrentAccount, RedisDep, ScopedCatalogDep
from api.openai.errors import OpenAIError
from shared import keys
from shared.catalog import BUILTIN_CATALOG, ModelSpec
from shared.provider_config import get_provider_settings

router = APIRouter()

# OpenAI's models carry when they were made; the fleet's, when its catalog was.
CREATED = int(BUILTIN_CATALOG.stat().st_mtime)


def model_object(spec: ModelSpec) -> dict:
    return {"id": spec.id, "object": "model", "created": CREATED, "owned_by": spec.family}


async def servable(redis, account: str, catalog) -> dict[str, ModelSpec]:
    providers = get_provider_settings()
    raw = await redis.hget(keys.account(account), "model_limits")
    closed = set()
    if raw:
        for model, limits in orjson.loads(raw).items():
            if any(limits.get(name) == 0 for name in ("rpm", "tpm", "max_concurrency")):
                closed.add(model)
    return {spec.id: spec for spec in sorted(catalog, key=lambda s: s.id)
            if providers.missing_for(spec) is None and spec.id not in closed}


@router.get("/models")
async def list_models(account: CurrentAccount, redis: RedisDep, catalog: ScopedCatalogDep):
    return {"object": "list", "data": [model_object(s) for s in (await servable(redis, account, catalog)).values()]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, account: CurrentAccount, redis: RedisDep, catalog: ScopedCatalogDep):
    spec = (await servable(redis, account, catalog)).get(model_id)
    if spec is None:
        raise OpenAIError(404, f"the model {model_id!r} does not exist or this fleet cannot serve it",
                          "model", "model_not_found")
    return model_object(spec)
