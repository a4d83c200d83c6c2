"""``/v4/admin``: accounts, their limits and their API keys (admin key required)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from api import accounts
from api.deps import AdminAuth, CatalogDep, RedisDep

router = APIRouter(prefix="/v4/admin", dependencies=[AdminAuth])


# Every limit, wherever it is set: a count Redis's scripts hold exactly (their numbers are doubles).
MAX_LIMIT = 10**12


# A budget in USD, held exactly in nano-USD by the scripts (doubles: exact to 2^53 nano-USD, $9M).
MAX_BUDGET_USD = 9_000_000


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="requests per minute (sliding window)")
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="prompt + completion tokens per minute")
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT, description="jobs running at once")
    budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD,
                                     description="the most the jobs may cost in each budget_period, in USD")
    budget_period: Literal["day", "month", "total"] | None = Field(
        default=None, description="the budget's period: a UTC calendar day or month, or in total (default month)")


class ModelLimits(BaseModel):
    """An account's limits for one model (no budget: budgets are the account's and its keys')."""
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str | None = Field(None, min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits, description="applied together with the account's")
    models: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=1000)] | None = Field(
        None, description="the model ids the key may use (others answer as unknown); null: every model")
    expires_at: datetime | None = Field(None, description="when the key stops working (ISO 8601)")


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str | None = Field(None, min_length=1, max_length=200)
    limits: Limits | None = None
    models: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=1000)] | None = None
    expires_at: datetime | None = None


# Per model, the models to fall back on, in order, when every deployment of it fails.
Fallbacks = dict[str, Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=5)]]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits)
    model_limits: dict[str, ModelLimits] = Field(default_factory=dict)
    fallback_models: Fallbacks = Field(default_factory=dict)


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    limits: Limits | None = None
    model_limits: dict[str, ModelLimits] | None = None
    fallback_models: Fallbacks | None = None


def _check_fallbacks(value: dict[str, list[str]] | None, catalog) -> None:
    for model, fallbacks in (value or {}).items():
        for name in [model, *fallbacks]:
            if catalog.get(name) is None:
                raise HTTPException(400, f"fallback_models: {name!r} is not a model of the catalog")
        if model in fallbacks:
            raise HTTPException(400, f"fallback_models: {model!r} cannot fall back on itself")


def _model_limits(value: dict[str, ModelLimits] | None) -> dict | None:
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


def _check_models(models: list[str] | None, catalog) -> None:
    for i, name in enumerate(models or ()):
        if catalog.get(name) is None:
            raise HTTPException(400, f"models[{i}]: {name!r} is not a model of the catalog")


def _timestamp(value: datetime) -> float:
    if value.tzinfo is None:
        raise HTTPException(400, "expires_at: give a time zone (e.g. 2027-01-01T00:00:00Z)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not 1970 <= utc.year <= 9998:
        raise HTTPException(400, "expires_at: give a time between 1970 and 9998 (UTC)")
    return utc.timestamp()


def _limits(limits: Limits | None, unset_too: bool) -> dict | None:
    if limits is None:
        return None
    return limits.model_dump(exclude_unset=unset_too)


@router.post("/accounts/{account_id}/api-keys", status_code=201)
async def create_api_key(account_id: str, redis: RedisDep, catalog: CatalogDep, body: KeyCreate | None = None):
    """A key for the account, with its own scope: a name, limits (applied with the account's),
    the models it may use and an expiry, all optional."""
    await _account_or_404(redis, account_id)
    body = body or KeyCreate.model_validate({})
    _check_models(body.models, catalog)
    expires_at = _timestamp(body.expires_at) if body.expires_at is not None else None
    if expires_at is not None and expires_at <= time.time():
        raise HTTPException(400, "expires_at: the time is already past")
    key_id, secret = await accounts.add_api_key(redis, account_id, name=body.name,
                                                limits=_limits(body.limits, False), models=body.models,
                                                expires_at=expires_at)
    view = await accounts.get_api_key(redis, key_id) or {}
    return {**view, "key": secret, "note": "the key is shown once; only its digest is stored"}


@router.get("/api-keys/{key_id}")
async def get_api_key(key_id: str, redis: RedisDep):
    key = await accounts.get_api_key(redis, key_id)
    if key is None:
        raise HTTPException(404, f"API key {key_id!r} not found")
    return key


@router.patch("/api-keys/{key_id}")
async def update_api_key(key_id: str, body: KeyUpdate, redis: RedisDep, catalog: CatalogDep):
    """Change what is named in the body: ``name``; ``limits`` (only those named; null removes
    one); ``models`` (null: every model); ``expires_at`` (null: never)."""
    _check_models(body.models, catalog)
    fields: dict = {name: getattr(body, name) for name in body.model_fields_set if name != "limits"}
    if "expires_at" in fields and fields["expires_at"] is not None:
        fields["expires_at"] = _timestamp(fields["expires_at"])
    if body.limits is not None:
        fields["limits"] = _limits(body.limits, True)
    key = await accounts.update_api_key(redis, key_id, fields)
    if key is None:
        raise HTTPException(404, f"API key {key_id!r} not found")
    return key


@router.get("/accounts/{account_id}/api-keys")
async def list_api_keys(account_id: str, redis: RedisDep):
    await _account_or_404(redis, account_id)
    return {"object": "list", "data": await accounts.list_api_keys(redis, account_id)}


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, redis: RedisDep):
    if not await accounts.revoke_api_key(redis, key_id):
        raise HTTPException(404, f"API key {key_id!r} not found")
    return Response(status_code=204)
