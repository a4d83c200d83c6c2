"""Accounts and API keys. Keys are stored only as their SHA-256 digest.

API keys are long random secrets (not passwords), so a fast digest is the right lookup key:
a leaked Redis dump does not reveal usable keys, and a lookup costs one GET.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from shared import keys

KEY_PREFIX = "cf-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def account_keys(account_id: str) -> str:
    return f"{keys.account(account_id)}:keys"


async def ensure_account(redis, account_id: str, name: str | None = None) -> None:
    now = repr(time.time())
    async with redis.pipeline(transaction=True) as pipe:
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
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.api_key(digest), mapping={
            "account_id": account_id, "key_id": key_id, "created_at": repr(time.time()),
        })
        pipe.hset(account_keys(account_id), key_id, digest)
        await pipe.execute()
    return key_id, secret


async def authenticate(redis, secret: str) -> str | None:
    """The account the key acts for, or None for an unknown or revoked key."""
    if not secret:
        return None
    return await redis.hget(keys.api_key(hash_key(secret)), "account_id")
