"""Request dependencies: settings, Redis, the job store, and the calling account.

Every dependency is ``async def``, even those that only read app state: FastAPI runs a plain
``def`` dependency in its thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from api import sessions
from api.accounts import Caller, authenticate
from api.batch_validation import Validations
from api.batches import LineFormats
from api.streams import PubSubHub
from shared.catalog import Catalog
from shared.jobs import JobStore
from shared.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request):
    return request.app.state.redis


async def get_raw_redis(request: Request):
    return request.app.state.raw_redis


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_hub(request: Request) -> PubSubHub:
    return request.app.state.hub


async def get_catalog_dep(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_validations(request: Request) -> Validations:
    """This process's batch validations in the background (``api/batch_validation.py``)."""
    return request.app.state.validations


async def get_line_formats(request: Request) -> LineFormats:
    """Every door's batch line format, by url (``api/main.py`` collects them)."""
    return request.app.state.line_formats


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# The state store's asyncio clients (the raw one does not decode): Any, as in shared/, since
# redis-py types every reply bytes | str whatever the client decodes.
RedisDep = Annotated[Any, Depends(get_redis)]
RawRedisDep = Annotated[Any, Depends(get_raw_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
HubDep = Annotated[PubSubHub, Depends(get_hub)]
CatalogDep = Annotated[Catalog, Depends(get_catalog_dep)]
LineFormatsDep = Annotated[LineFormats, Depends(get_line_formats)]
ValidationsDep = Annotated[Validations, Depends(get_validations)]


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request carries: ``x-api-key`` (SGP clients), else ``Authorization: Bearer``
    (OpenAI clients), on every route alike."""
    if x_api_key:
        return x_api_key
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


XApiKey = Annotated[str | None, Header(description="the API key (or send Authorization: Bearer)")]
Authorization = Annotated[str | None, Header(description="Bearer <API key> (or send x-api-key)")]


async def current_caller(
    request: Request,
    x_api_key: XApiKey = None,
    authorization: Authorization = None,
    x_selected_account_id: Annotated[str | None, Header()] = None,
) -> Caller:
    """Who the request's key acts for (kept on ``request.state.caller`` for the routes that
    submit jobs)."""
    key = presented_key(x_api_key, authorization)
    if not key and request.method in ("GET", "HEAD") and sessions.COOKIE in request.cookies:
        # The console's own reads (a job's stream, a batch's progress and results) with its
        # session's cookie; never a write, whose forms carry a CSRF token instead.
        session = await sessions.current(request.app.state.redis, request.app.state.settings,
                                         request.cookies.get(sessions.COOKIE))
        if session is not None and session.caller is not None:
            request.state.caller = session.caller
            return session.caller
    if not key:
        raise HTTPException(401, "missing API key: send it in the x-api-key header or as Authorization: Bearer <key>")
    caller = await authenticate(request.app.state.redis, key)
    if caller is None:
        raise HTTPException(401, "invalid API key")  # unknown, revoked or expired: alike
    if x_selected_account_id and x_selected_account_id != caller.account_id:
        raise HTTPException(403, "this API key cannot act for the account in x-selected-account-id")
    request.state.caller = caller
    return caller


async def current_account(caller: Annotated[Caller, Depends(current_caller)]) -> str:
    return caller.account_id


CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentAccount = Annotated[str, Depends(current_account)]


async def scoped_catalog(request: Request, caller: CurrentCaller) -> Catalog:
    """The catalog as the caller's key sees it: a key limited to some models sees only those
    (any other is unknown to it, as a model the fleet does not have)."""
    catalog: Catalog = request.app.state.catalog
    return catalog if caller.models is None else catalog.only(caller.models)


ScopedCatalogDep = Annotated[Catalog, Depends(scoped_catalog)]


async def require_admin(request: Request, x_api_key: XApiKey = None, authorization: Authorization = None) -> None:
    configured = request.app.state.settings.admin_api_key
    if configured is None:
        raise HTTPException(401, "the admin API is disabled: set CHATFLEET_ADMIN_API_KEY to enable it")
    key = presented_key(x_api_key, authorization)
    if not key or not hmac.compare_digest(key.encode(), configured.get_secret_value().encode()):
        raise HTTPException(401, "missing or invalid admin API key (x-api-key or Authorization: Bearer)")


AdminAuth = Depends(require_admin)
