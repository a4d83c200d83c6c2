"""The FastAPI application: thin, it authenticates, validates, records, enqueues and relays."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.accounts import add_api_key, ensure_account
from api.limits import BodyLimit
from api.metrics import MetricsMiddleware, metrics_endpoint
from api.openai import batches as openai_batches
from api.openai import chat as openai_chat
from api.openai import errors as openai_errors
from api.openai import files as openai_files
from api.openai import models as openai_models
from api.routes import admin, batches, chat, health, jobs, models, usage
from api.streams import PubSubHub
from shared.catalog import get_catalog
from shared.connections import async_redis, is_cluster_url, node_url
from shared.gcfreeze import freeze_startup_objects
from shared.broker import broker_for
from shared.jobs import JobStore
from shared.logs import configure_logging
from shared.scriptchannel import ScriptChannel
from shared.settings import Settings, get_settings

log = logging.getLogger("api")


def _encodable(value):
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    return value


EXCERPT_CHARS = 200


def _excerpts(errors: list[dict]) -> list[dict]:
    """Validation errors with what they quote of the input cut to an excerpt: a 10 MB value sent
    is not sent back."""
    out = []
    for error in errors:
        if "input" in error:
            try:
                shown = orjson.dumps(error["input"], default=str).decode()
            except TypeError:  # a number JSON libraries refuse (past 64 bits): its digits
                shown = repr(error["input"])
                error = {**error, "input": shown}
            if len(shown) > EXCERPT_CHARS:
                error = {**error, "input": shown[:EXCERPT_CHARS] + f"... ({len(shown)} characters)"}
        out.append(error)
    return out


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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = async_redis(settings.state_url, max_connections=1000)
        app.state.settings = settings
        app.state.redis = redis
        # Replies as bytes, for file contents (an upload need not be text).
        app.state.raw_redis = async_redis(settings.state_url, max_connections=100, decode_responses=False)
        app.state.catalog = get_catalog(settings.catalog_path)
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
            await app.state.hub.close()
            await broker.close()
            if pubsub is not redis:
                await pubsub.aclose()
            if channel is not None:
                await channel.close()
            await app.state.raw_redis.aclose()
            await redis.aclose()

    app = FastAPI(title="chatfleet", version="0.1.0", lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(usage.router)
    app.include_router(admin.router)
    app.include_router(batches.router)
    for module in (openai_chat, openai_models, openai_files, openai_batches):  # the OpenAI front door
        app.include_router(module.router, prefix="/v1")
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        if openai_errors.is_openai(request.url.path):
            return openai_errors.validation_response(exc)
        # FastAPI's own 422, made safe to encode: a request can carry text (lone surrogates)
        # that is valid JSON but cannot be written back as UTF-8.
        return JSONResponse({"detail": _encodable(jsonable_encoder(_excerpts(exc.errors())))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException):
        if openai_errors.is_openai(request.url.path):
            return openai_errors.refused_response(exc)
        return await http_exception_handler(request, exc)

    @app.exception_handler(openai_errors.OpenAIError)
    async def _openai_error(request: Request, exc: openai_errors.OpenAIError):
        return openai_errors.error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError):
        log.error("Redis error on %s: %s", request.url.path, exc)
        message = "the job store is unavailable; retry shortly"
        if openai_errors.is_openai(request.url.path):
            return openai_errors.error_response(503, message, headers={"Retry-After": "1"})
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "1"})

    return app


app = create_app()
