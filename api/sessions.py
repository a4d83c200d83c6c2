"""The console's sessions: a key (an account's or the admin's) exchanged for a random session
token, kept by the browser in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over TLS)
and in Redis by its SHA-256 only, with the session's CSRF token.

A session holds no right of its own: each request checks the key it was opened with again (an
account key still stored, the admin key still the configured one), so revoking the key ends
every session opened with it at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from api.accounts import Caller, authenticate_digest, hash_key
from shared import keys
from shared.settings import Settings

COOKIE = "chatfleet_session"
# Before sign-in: the double-submit token of the sign-in form.
LOGIN_COOKIE = "chatfleet_login"
SESSION_SECONDS = 8 * 3600
ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Session:
    token_digest: str
    kind: str  # account | admin
    csrf: str
    caller: Caller | None  # the account's caller; None for the admin


def _admin_digest(settings: Settings) -> str | None:
    configured = settings.admin_api_key
    return hash_key(configured.get_secret_value()) if configured is not None else None


async def sign_in(redis, settings: Settings, key: str) -> tuple[str, Session] | None:
    """A new session for ``key`` (the admin key, or an account's): (its token, the session);
    None for a key that is neither."""
    digest = hash_key(key)
    admin = _admin_digest(settings)
    if admin is not None and hmac.compare_digest(digest, admin):
        kind, caller = ADMIN, None
    else:
        caller = await authenticate_digest(redis, digest)
        if caller is None:
            return None
        kind = "account"
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    token_digest = hashlib.sha256(token.encode()).hexdigest()
    await redis.hset(keys.console_session(token_digest), mapping={
        "kind": kind, "key_digest": digest, "csrf": csrf, "created_at": repr(time.time())})
    await redis.expire(keys.console_session(token_digest), SESSION_SECONDS)
    return token, Session(token_digest, kind, csrf, caller)


async def current(redis, settings: Settings, token: str | None) -> Session | None:
    """The session of this cookie's token, if it is open and its key still valid."""
    if not token or len(token) > 200:
        return None
    token_digest = hashlib.sha256(token.encode()).hexdigest()
    record = await redis.hgetall(keys.console_session(token_digest))
    if not record:
        return None
    if record.get("kind") == ADMIN:
        admin = _admin_digest(settings)
        if admin is None or not hmac.compare_digest(record.get("key_digest", ""), admin):
            await redis.delete(keys.console_session(token_digest))
            return None
        return Session(token_digest, ADMIN, record["csrf"], None)
    caller = await authenticate_digest(redis, record.get("key_digest", ""))
    if caller is None:  # revoked or expired: the session ends with it
        await redis.delete(keys.console_session(token_digest))
        return None
    return Session(token_digest, "account", record["csrf"], caller)


async def sign_out(redis, session: Session) -> None:
    await redis.delete(keys.console_session(session.token_digest))


def new_login_token() -> str:
    """The sign-in form's CSRF token, given in its cookie and its hidden field alike."""
    return secrets.token_urlsafe(24)


def csrf_ok(session_csrf: str, given: str | None) -> bool:
    return bool(session_csrf) and bool(given) and hmac.compare_digest(session_csrf.encode(), (given or "").encode())
