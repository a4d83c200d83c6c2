"""``/v4/admin``: accounts, their limits and their API keys (admin key required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from api import accounts
from api.deps import AdminAuth, CatalogDep, RedisDep

router = APIRouter(prefix="/v4/admin", dependencies=[AdminAuth])


# Every limit, wherever it is set: a count Redis's scripts hold exactly (their numbers are doubles).
MAX_LIMIT = 10**12


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="requests per minute (sliding window)")
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="prompt + completion tokens per minute")
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="jobs running at once")


# Per model, the models to fall back on, in order, when every deployment of it fails.
Fallbacks = dict[str, Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=5)]]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits)
    model_limits: dict[str, Limits] = Field(default_factory=dict)
    fallback_models: Fallbacks = Field(default_factory=dict)


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    limits: Limits | None = None
    model_limits: dict[str, Limits] | None = None
    fallback_models: Fallbacks | None = None


def _check_fallbacks(value: dict[str, list[str]] | None, catalog) -> None:
    for model, fallbacks in (value or {}).items():
        for name in [model, *fallbacks]:
            if catalog.get(name) is None:
                raise HTTPException(400, f"fallback_models: {name!r} is not a model of the catalog")
        if model in fallbacks:
            raise HTTPException(400, f"fallback_models: {model!r} cannot fall back on itself")


def _model_limits(value: dict[str, Limits] | None) -> dict | None:
    if value is None:
        return None
    return {model: limits.model_dump(exclude_none=True) for model, limits in value.items()}


async def _account_or_404(redis, account_id: str) -> dict:
    account = await accounts.get_account(redis, account_id)
    if account is None:
        raise HTTPException(404, f"account {account_id!r} not found")
    return account


@router.post("/accounts", status_code=201)
async def create_account(body: AccountCreate, redis: RedisDep, catalog: CatalogDep):
    _check_fallbacks(body.fallback_models, catalog)
    account_id = await accounts.create_account(
        redis, body.name, body.limits.model_dump(), _model_limits(body.model_limits), body.fallback_models)
    return await accounts.get_account(redis, account_id)


@router.get("/accounts")
async def list_accounts(redis: RedisDep):
    return {"object": "list", "data": await accounts.list_accounts(redis)}


@router.get("/accounts/{account_id}")
async def get_account(account_id: str, redis: RedisDep):
    return await _account_or_404(redis, account_id)


@router.patch("/accounts/{account_id}")
async def update_account(account_id: str, body: AccountUpdate, redis: RedisDep, catalog: CatalogDep):
    await _account_or_404(redis, account_id)
    _check_fallbacks(body.fallback_models, catalog)
    # Only the limits named in the body change; null removes a limit.
    limits = body.limits.model_dump(exclude_unset=True) if body.limits is not None else None
    await accounts.update_account(redis, account_id, body.name, limits, _model_limits(body.model_limits),
                                  body.fallback_models)
    return await accounts.get_account(redis, account_id)


@router.post("/accounts/{account_id}/api-keys", status_code=201)
async def create_api_key(account_id: str, redis: RedisDep):
    await _account_or_404(redis, account_id)
    key_id, secret = await accounts.add_api_key(redis, account_id)
    return {"id": key_id, "object": "api_key", "account_id": account_id, "key": secret,
            "note": "the key is shown once; only its digest is stored"}


@router.get("/accounts/{account_id}/api-keys")
async def list_api_keys(account_id: str, redis: RedisDep):
    await _account_or_404(redis, account_id)
    return {"object": "list", "data": await accounts.list_api_keys(redis, account_id)}


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, redis: RedisDep):
    if not await accounts.revoke_api_key(redis, key_id):
        raise HTTPException(404, f"API key {key_id!r} not found")
    return Response(status_code=204)
