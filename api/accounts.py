"""Accounts and API keys. Keys are stored only as their SHA-256 digest.

API keys are long random secrets (not passwords), so a fast digest is the right lookup key:
a leaked Redis dump does not reveal usable keys, and a lookup costs one GET.
"""

from __future__ import annotations

import hashlib
import secrets
import time

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


async def add_api_key(redis, account_id: str, secret: str | None = None) -> tuple[str, str]:
    """Store a key for the account; returns (key id, secret). The secret is not kept."""
    secret = secret or new_secret()
    digest = hash_key(secret)
    existing = await redis.hget(keys.api_key(digest), "key_id")
    if existing:
        return existing, secret
    key_id = f"key_{secrets.token_hex(8)}"
    async with multi(redis) as pipe:
        # Listed first, usable last: a key that works is always one its account lists.
        pipe.hset(keys.account_api_keys(account_id), key_id, digest)
        pipe.set(keys.api_key_id(key_id), digest)
        pipe.hset(keys.api_key(digest), mapping={
            "account_id": account_id, "key_id": key_id, "created_at": repr(time.time()),
            # Enough to tell keys apart in a listing, not enough to use one.
            "prefix": secret[:7],
        })
        await pipe.execute()
    return key_id, secret


async def authenticate(redis, secret: str) -> str | None:
    """The account the key acts for, or None for an unknown or revoked key."""
    if not secret:
        return None
    return await redis.hget(keys.api_key(hash_key(secret)), "account_id")


LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency")


def new_account_id() -> str:
    return f"acct_{secrets.token_hex(8)}"


def _limits_mapping(limits: dict | None) -> tuple[dict[str, str], list[str]]:
    """Hash fields to set and to delete (None means no limit)."""
    to_set, to_del = {}, []
    for name in LIMIT_FIELDS:
        if limits is not None and name in limits:
            if limits[name] is None:
                to_del.append(name)
            else:
                to_set[name] = str(int(limits[name]))
    return to_set, to_del


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
        "limits": {name: int(record[name]) if record.get(name) else None for name in LIMIT_FIELDS},
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


async def list_api_keys(redis, account_id: str) -> list[dict]:
    entries = await redis.hgetall(keys.account_api_keys(account_id))
    async with redis.pipeline(transaction=False) as pipe:
        for digest in entries.values():
            pipe.hgetall(keys.api_key(digest))
        records = await pipe.execute()
    return sorted(
        ({"id": r["key_id"], "object": "api_key", "account_id": r["account_id"],
          "created_at": iso(r.get("created_at")), "prefix": r.get("prefix")}
         for r in records if r),
        key=lambda k: k["created_at"] or "",
    )


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
    return True

