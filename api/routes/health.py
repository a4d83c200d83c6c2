"""Liveness and readiness."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import RedisDep, SettingsDep
from shared import keys
from shared.provider_config import get_provider_settings

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(redis: RedisDep, settings: SettingsDep):
    """Ready when Redis answers and at least one worker has reported recently."""
    report: dict = {"redis": "ok", "workers": {}}
    try:
        await redis.ping()
        fresh_after = time.time() - settings.worker_heartbeat_seconds * 3
        hostnames = await redis.zrangebyscore(keys.WORKERS, fresh_after, "+inf")
        async with redis.pipeline(transaction=False) as pipe:
            for hostname in hostnames:
                pipe.hmget(keys.worker(hostname), "queues", "metrics_port")
            rows = await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the probe answers not ready
        report["redis"] = f"unreachable: {type(exc).__name__}"
        return JSONResponse({"status": "not_ready", **report}, status_code=503)
    report["metrics_ports"] = {}  # each worker's metrics port, where it serves them
    for hostname, (queues, metrics_port) in zip(hostnames, rows):
        for queue in (queues or "").split(","):
            if queue:
                report["workers"].setdefault(queue, []).append(hostname)
        if metrics_port and metrics_port != "0":
            report["metrics_ports"][hostname] = int(metrics_port)
    settings_ = get_provider_settings()
    report["providers"] = {family: settings_.missing_setting(family) is None
                           for family in ("openai", "anthropic", "gemini", "mistral", "bedrock", "llm_engine")}
    report["providers"]["local"] = True
    ready = bool(hostnames)
    return JSONResponse({"status": "ready" if ready else "not_ready", **report}, status_code=200 if ready else 503)
