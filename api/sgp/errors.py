"""Errors as the SGP contract words them, FastAPI's way: 422 ``{"detail": [...]}`` for a request
the schema refuses, ``{"detail": "..."}`` with the status for any other refusal. The fleet's
own routes (``/v4/admin``, ``/v4/usage``, ``/healthz``) word theirs the same way."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import orjson
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

EXCERPT_CHARS = 200


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity: "nan", "inf", "-inf"
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    return value


def _excerpts(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


class SGPErrors:
    invalid_status = 422
    error_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["detail"],
        "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
                                  "description": "what to fix (a list of field errors for a 422)"},
                       "code": {"type": "string"}}}

    def invalid(self, exc: RequestValidationError) -> Response:
        # FastAPI's own 422, made safe to encode: a request can carry text (lone surrogates)
        # that is valid JSON but cannot be written back as UTF-8.
        return JSONResponse({"detail": _encodable(jsonable_encoder(_excerpts(list(exc.errors()))))},
                            status_code=422)

    async def refused(self, request: Request, exc: HTTPException) -> Response:
        return await http_exception_handler(request, exc)

    def refusal(self, status: int, message: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
