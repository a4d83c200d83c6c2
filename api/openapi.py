"""The OpenAPI document as the API answers, door by door, and the ``Allow`` of a 405.

FastAPI documents a 200 and a 422 for every operation. Each door answers its own errors
(``api/doors.py``): the OpenAI door never answers 422 (its validation errors are 400s) and
words every error as ``{"error": {...}}``; the SGP door and the fleet's own routes answer
``{"detail": ...}``. The document says so for each operation, with the statuses any of them can
answer (a bad request, a missing or unknown key, a path id that is not the caller's, a body too
large, a rate limit, the state store away); the streamed, JSONL and CSV answers are declared on
their routes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse

from api.doors import Door, door_of

# Statuses every operation can answer, and those only some can.
COMMON = (400, 401, 429, 503)
WITH_PATH_ID = 404  # an id in the path that is not the caller's (or does not exist)
WITH_BODY = 413  # POST, PATCH: a body past CHATFLEET_MAX_BODY_BYTES
SSE = {"text/event-stream": {"schema": {"type": "string"},
                             "example": "id: 1\nevent: token\ndata: {...}\n\n"}}
JSONL = {"application/jsonl": {"schema": {"type": "string", "description": "one JSON object per line"}}}
CSV = {"text/csv": {"schema": {"type": "string"}}}


def streamed(*contents: dict[str, Any], description: str) -> dict[str, Any]:
    """A streamed route's keywords: its 200 in these content types only."""
    return {"response_class": StreamingResponse,
            "responses": answers(*contents, json_too=False, description=description)}


def answers(*contents: dict[str, Any], json_too: bool = True, description: str = "") -> dict[int | str, Any]:
    """A route's ``responses=``: its 200 in these content types (and JSON, unless not)."""
    content: dict[str, Any] = {"application/json": {}} if json_too else {}
    for more in contents:
        content.update(more)
    return {200: {"description": description or "the answer", "content": content}}


def install(app: FastAPI, doors: Sequence[Door]) -> None:
    """``app.openapi`` made to document each door's errors (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path, item in schema.get("paths", {}).items():
                errors = door_of(doors, path).errors
                for method, operation in item.items():
                    _document(path, method, operation, errors.invalid_status, errors.error_schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(path: str, method: str, operation: dict[str, Any], invalid_status: int,
              error_schema: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if invalid_status != 422:
        responses.pop("422", None)  # this door's validation errors are answered with its own status
    statuses = [*COMMON]
    if "{" in path:
        statuses.append(WITH_PATH_ID)
    if method in ("post", "patch", "put"):
        statuses.append(WITH_BODY)
    for status in sorted(statuses):
        described = "the request is refused (its fields say what to fix)" if status == invalid_status \
            else HTTPStatus(status).phrase
        responses.setdefault(str(status), {
            "description": described, "content": {"application/json": {"schema": error_schema}}})


def allowed_methods(app: FastAPI) -> Callable[[str], list[str]]:
    """A function of a path: every method some route serves there (a 405's ``Allow``; Starlette
    names those of the first route that matched the path only)."""
    table: list[tuple[re.Pattern[str], set[str]]] = []

    def build() -> None:
        for path, item in app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
            methods = {m.upper() for m in item}
            if "GET" in methods:
                methods.add("HEAD")
            table.append((pattern, methods))

    def allowed(path: str) -> list[str]:
        if not table:
            build()
        return sorted({m for pattern, methods in table if pattern.match(path) for m in methods})

    return allowed
