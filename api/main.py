"""The FastAPI application: thin, it authenticates, validates, records, enqueues and relays.

This module puts the API together: the core's state (Redis, the job store, the pub/sub hub), the
fleet's own routes (``api/routes/``) and the doors (``api/sgp/``, ``api/openai/``, see
``api/doors.py``), each door wording the errors of its paths."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import openai, sgp
from api.accounts import add_api_key, ensure_account
from api.batch_validation import Validations
from api.console import pages as console_pages
from api.docs import add_docs
from api.doors import Door, door_of
from api.limits import BodyLimit
from api.metrics import MetricsMiddleware, metrics_endpoint
from api.openapi import allowed_methods
from api.openapi import install as install_openapi
from api.routes import admin, health, usage, webhooks
from api.streams import PubSubHub
from shared.brokers import broker_for
from shared.catalog import get_catalog
from shared.connections import async_redis, is_cluster_url, node_url
from shared.gcfreeze import freeze_startup_objects
from shared.jobs import JobStore
from shared.logs import configure_logging
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings, get_settings

log = logging.getLogger("api")


def _on_sigterm(callback) -> None:
    """Run ``callback`` as soon as SIGTERM arrives, before uvicorn's own handler starts its
    graceful shutdown: open streams end at once with a reconnect event, so that the server
    is not kept waiting by them and clients move to another instance."""
    previous = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def handler(signum, frame):
        loop.call_soon_threadsafe(callback)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    doors: tuple[Door, ...] = (sgp.door(), openai.door())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = async_redis(settings.state_url, max_connections=1000)
        app.state.settings = settings
        app.state.redis = redis
        # Replies as bytes, for file contents (an upload need not be text).
        app.state.raw_redis = async_redis(settings.state_url, max_connections=100, decode_responses=False)
        app.state.catalog = get_catalog(settings.catalog_path)
        app.state.line_formats = {f.url: f for door in doors for f in door.line_formats}
        app.state.validations = Validations(redis, app.state.raw_redis, app.state.catalog, settings,
                                            app.state.line_formats)
        sweeping = asyncio.create_task(app.state.validations.run_sweeps(), name="batch validation sweep")
        # Job creation, on every submission, goes through a script channel (shared.scriptchannel).
        channel = ScriptChannel.for_url(settings.state_url)
        broker = broker_for(redis, channel, settings)
        app.state.store = JobStore(redis, settings, channel, broker)
        # A cluster hands every PUBLISH to every node: the hub listens on one of them.
        pubsub = async_redis(node_url(settings.state_url)) if is_cluster_url(settings.state_url) else redis
        app.state.hub = PubSubHub(pubsub)
        await app.state.hub.start()
        _on_sigterm(app.state.hub.shutdown)
        if settings.bootstrap_dev_account:
            await ensure_account(redis, settings.dev_account)
            await add_api_key(redis, settings.dev_account, settings.dev_api_key)
        freeze_startup_objects()
        try:
            yield
        finally:
            sweeping.cancel()
            await app.state.validations.close()
            await app.state.hub.close()
            await broker.close()
            if pubsub is not redis:
                await pubsub.aclose()
            if channel is not None:
                await channel.close()
            await app.state.raw_redis.aclose()
            await redis.aclose()

    app = FastAPI(title="chatfleet", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_docs(app)
    install_openapi(app, doors)
    for router in (health.router, usage.router, admin.router, webhooks.router):  # the fleet's own routes
        app.include_router(router)
    app.include_router(console_pages.router)
    for door in doors:
        for router in door.routers:
            app.include_router(router, prefix=door.mount)
        for exc_class, handler in door.handlers.items():
            app.add_exception_handler(exc_class, handler)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_middleware(BodyLimit, settings=settings, doors=doors)
    app.add_middleware(MetricsMiddleware, mounts=tuple(door.mount for door in doors))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return door_of(doors, request.url.path).errors.invalid(exc)

    allowed = allowed_methods(app)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:  # every method the path is served with, not those of one route
            methods = allowed(request.url.path)
            if methods:
                exc = StarletteHTTPException(405, f"{request.method} is not served here; use {', '.join(methods)}",
                                             headers={"Allow": ", ".join(methods)})
        return await door_of(doors, request.url.path).errors.refused(request, exc)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError):
        log.error("Redis error on %s: %s", request.url.path, exc)
        return door_of(doors, request.url.path).errors.refusal(
            503, "the job store is unavailable; retry shortly", headers={"Retry-After": "1"})

    return app


app = create_app()
