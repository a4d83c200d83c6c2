"""Accounts and API keys. Keys are stored only as their SHA-256 digest.

API keys are long random secrets (not passwords), so a fast digest is the right lookup key:
a leaked Redis dump does not reveal usable keys, and a lookup costs one GET.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import orjson

from shared import keys
from shared.connections import multi
from shared.results import iso

KEY_PREFIX = "cf-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def ensure_account(redis, account_id: str, name: str | None = None) -> None:
    now = repr(time.time())
    async with multi(redis) as pipe:
        pipe.hsetnx(keys.account(account_id), "id", account_id)
        pipe.hsetnx(keys.account(account_id), "name", name or account_id)
        pipe.hsetnx(keys.account(account_id), "created_at", now)
        pipe.sadd(keys.ACCOUNTS, account_id)
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request's API key acts for, and what the key itself allows."""

    account_id: str
    key_id: str
    #: The model ids the key may use (None: every model of the catalog).
    models: frozenset[str] | None = None


def caller_of(request) -> Caller | None:
    """Who the request's API key acts for (None on a route without one): kept on the request by
    ``api.deps.current_caller``."""
    return getattr(request.state, "caller", None)


async def add_api_key(redis, account_id: str, secret: str | None = None, *, name: str | None = None,
                      limits: dict | None = None, models: list[str] | None = None,
                      expires_at: float | None = None) -> tuple[str, str]:
    """Store a key for the account, with its own scope (a name, limits applied with the
    account's, the models it may use, an expiry); returns (key id, secret). The secret is not
    kept."""
    secret = secret or new_secret()
    digest = hash_key(secret)
    existing = await redis.hget(keys.api_key(digest), "key_id")
    if existing:
        return existing, secret
    key_id = f"key_{secrets.token_hex(8)}"
    record = {"account_id": account_id, "key_id": key_id, "created_at": repr(time.time()),
              # Enough to tell keys apart in a listing, not enough to use one.
              "prefix": secret[:7]}
    if name is not None:
        record["name"] = name
    if models is not None:
        record["models"] = orjson.dumps(sorted(set(models))).decode()
    if expires_at is not None:
        record["expires_at"] = repr(expires_at)
    to_set, _ = _limits_mapping(limits)
    # The key's limits live in its account's slot, where admission reads them with the account's.
    if to_set:
        await redis.hset(keys.key_limits(account_id, key_id), mapping=to_set)
    async with multi(redis) as pipe:
        # Listed first, usable last: a key that works is always one its account lists.
        pipe.hset(keys.account_api_keys(account_id), key_id, digest)
        pipe.set(keys.api_key_id(key_id), digest)
        pipe.hset(keys.api_key(digest), mapping=record)
        await pipe.execute()
    return key_id, secret


async def authenticate(redis, secret: str) -> Caller | None:
    """Who the key acts for, or None for an unknown, revoked or expired key."""
    if not secret:
        return None
    return await authenticate_digest(redis, hash_key(secret))


async def authenticate_digest(redis, digest: str) -> Caller | None:
    """``authenticate`` for the key of this digest (a console session keeps only the digest)."""
    if not digest:
        return None
    account_id, key_id, models, expires_at = await redis.hmget(
        keys.api_key(digest), "account_id", "key_id", "models", "expires_at")
    if account_id is None or (expires_at and float(expires_at) <= time.time()):
        return None
    return Caller(account_id, key_id or "", frozenset(orjson.loads(models)) if models else None)


LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency")
BUDGET_PERIODS = ("day", "month", "total")


def new_account_id() -> str:
    return f"acct_{secrets.token_hex(8)}"


def _limits_mapping(limits: dict | None) -> tuple[dict[str, str], list[str]]:
    """Hash fields to set and to delete (None means no limit). A budget is kept in nano-USD,
    the unit admission counts in (``lua/admit.lua``), with its period (none set: ``month``)."""
    to_set, to_del = {}, []
    for name in LIMIT_FIELDS:
        if limits is not None and name in limits:
            if limits[name] is None:
                to_del.append(name)
            else:
                to_set[name] = str(int(limits[name]))
    if limits is not None and "budget_usd" in limits:
        if limits["budget_usd"] is None:
            to_del += ["budget_nanousd", "budget_period"]
        else:
            to_set["budget_nanousd"] = str(round(limits["budget_usd"] * 1e9))
    if limits is not None and limits.get("budget_period") and limits.get("budget_usd", 0) is not None:
        to_set["budget_period"] = limits["budget_period"]
    return to_set, to_del


def limits_view(record: dict[str, str]) -> dict:
    """The limits of an account's or a key's hash, as the admin API shows them."""
    view: dict = {name: int(record[name]) if record.get(name) else None for name in LIMIT_FIELDS}
    budget = record.get("budget_nanousd")
    view["budget_usd"] = int(budget) / 1e9 if budget else None
    view["budget_period"] = (record.get("budget_period") or "month") if budget else None
    return view


async def create_account(redis, name: str, limits: dict | None = None, model_limits: dict | None = None,
                         fallback_models: dict | None = None, account_id: str | None = None) -> str:
    account_id = account_id or new_account_id()
    to_set, _ = _limits_mapping(limits or {})
    fields = {"id": account_id, "name": name, "created_at": repr(time.time()), **to_set}
    if model_limits:
        fields["model_limits"] = orjson.dumps(model_limits).decode()
    if fallback_models:
        fields["fallback_models"] = orjson.dumps(fallback_models).decode()
    async with multi(redis) as pipe:
        pipe.hset(keys.account(account_id), mapping=fields)
        pipe.sadd(keys.ACCOUNTS, account_id)
        await pipe.execute()
    return account_id


async def get_account(redis, account_id: str) -> dict | None:
    record = await redis.hgetall(keys.account(account_id))
    if not record:
        return None
    return account_view(record)


def account_view(record: dict[str, str]) -> dict:
    return {
        "id": record["id"],
        "object": "account",
        "name": record.get("name"),
        "created_at": iso(record.get("created_at")),
        "limits": limits_view(record),
        "model_limits": orjson.loads(record["model_limits"]) if record.get("model_limits") else {},
        "fallback_models": orjson.loads(record["fallback_models"]) if record.get("fallback_models") else {},
    }


async def list_accounts(redis) -> list[dict]:
    ids = sorted(await redis.smembers(keys.ACCOUNTS))
    async with redis.pipeline(transaction=False) as pipe:
        for account_id in ids:
            pipe.hgetall(keys.account(account_id))
        records = await pipe.execute()
    return [account_view(r) for r in records if r]


async def update_account(redis, account_id: str, name: str | None = None, limits: dict | None = None,
                         model_limits: dict | None = None, fallback_models: dict | None = None) -> None:
    to_set, to_del = _limits_mapping(limits)
    if name is not None:
        to_set["name"] = name
    if model_limits is not None:
        to_set["model_limits"] = orjson.dumps(model_limits).decode()
    if fallback_models is not None:
        to_set["fallback_models"] = orjson.dumps(fallback_models).decode()
    async with multi(redis) as pipe:
        if to_set:
            pipe.hset(keys.account(account_id), mapping=to_set)
        if to_del:
            pipe.hdel(keys.account(account_id), *to_del)
        await pipe.execute()


def key_view(record: dict[str, str], limits: dict[str, str]) -> dict:
    """An API key as the admin API shows it (never its secret: only its digest is kept)."""
    expires = record.get("expires_at") or ""
    return {"id": record["key_id"], "object": "api_key", "account_id": record["account_id"],
            "name": record.get("name"), "created_at": iso(record.get("created_at")), "prefix": record.get("prefix"),
            "limits": limits_view(limits), "models": orjson.loads(record["models"]) if record.get("models") else None,
            "expires_at": iso(expires) if expires else None,
            "expired": bool(expires) and float(expires) <= time.time()}


async def list_api_keys(redis, account_id: str) -> list[dict]:
    entries = await redis.hgetall(keys.account_api_keys(account_id))
    async with redis.pipeline(transaction=False) as pipe:
        for digest in entries.values():
            pipe.hgetall(keys.api_key(digest))
        records = await pipe.execute()
    records = [r for r in records if r]
    async with redis.pipeline(transaction=False) as pipe:
        for r in records:
            pipe.hgetall(keys.key_limits(account_id, r["key_id"]))
        limits = await pipe.execute()
    return sorted((key_view(r, lim) for r, lim in zip(records, limits)), key=lambda k: k["created_at"] or "")


async def get_api_key(redis, key_id: str) -> dict | None:
    digest = await redis.get(keys.api_key_id(key_id))
    record = await redis.hgetall(keys.api_key(digest)) if digest else {}
    if not record:
        return None
    return key_view(record, await redis.hgetall(keys.key_limits(record["account_id"], key_id)))


async def update_api_key(redis, key_id: str, fields: dict) -> dict | None:
    """Change a key's name, limits (those named; null removes one), models (null: all) or
    expiry (null: never); None if there is no such key."""
    digest = await redis.get(keys.api_key_id(key_id))
    account_id = await redis.hget(keys.api_key(digest), "account_id") if digest else None
    if account_id is None:
        return None
    record_set: dict[str, str] = {}
    record_del: list[str] = []
    if "name" in fields:
        (record_set.__setitem__("name", fields["name"]) if fields["name"] is not None else record_del.append("name"))
    if "models" in fields:
        if fields["models"] is None:
            record_del.append("models")
        else:
            record_set["models"] = orjson.dumps(sorted(set(fields["models"]))).decode()
    if "expires_at" in fields:
        if fields["expires_at"] is None:
            record_del.append("expires_at")
        else:
            record_set["expires_at"] = repr(fields["expires_at"])
    to_set, to_del = _limits_mapping(fields.get("limits"))
    async with redis.pipeline(transaction=False) as pipe:
        if to_set:
            pipe.hset(keys.key_limits(account_id, key_id), mapping=to_set)
        if to_del:
            pipe.hdel(keys.key_limits(account_id, key_id), *to_del)
        if record_set:
            pipe.hset(keys.api_key(digest), mapping=record_set)
        if record_del:
            pipe.hdel(keys.api_key(digest), *record_del)
        await pipe.execute()
    return await get_api_key(redis, key_id)


async def revoke_api_key(redis, key_id: str) -> bool:
    digest = await redis.get(keys.api_key_id(key_id))
    if digest is None:
        return False
    record = await redis.hgetall(keys.api_key(digest))
    async with multi(redis) as pipe:
        pipe.delete(keys.api_key(digest))  # unusable first, then unlisted (each key apart: slots)
        pipe.delete(keys.api_key_id(key_id))
        if record.get("account_id"):
            pipe.hdel(keys.account_api_keys(record["account_id"]), key_id)
        await pipe.execute()
    # Its limits stay: the work it submitted before (queued jobs, batch lines) runs under them.
    return True

