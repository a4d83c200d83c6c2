"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the statuses the
openai SDK maps to its exception classes (400, 401, 403, 404, 409, 413, 422, 429, 5xx).

Every error on a ``/v1`` path takes this shape, whatever raised it: a refused request
(``api.jobs.Refused``, FastAPI's validation, which OpenAI answers with 400 rather than 422), an
unknown key, Redis being away. The SGP routes keep theirs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from api.jobs import MODELS_LIST

# OpenAI's error types by status (its API reference): the SDK maps the status, clients match these.
TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}
CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded", 413: "request_too_large"}
MAX_MESSAGE = 1000  # characters of a message; what the client sent is never quoted at length


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


# Codes whose type is not their status's: a spent budget is OpenAI's exhausted quota (a 429 the
# SDK raises as RateLimitError, typed ``insufficient_quota`` so that clients stop retrying).
TYPES_BY_CODE = {"budget_exceeded": "insufficient_quota"}


def error_type(status: int, code: str | None = None) -> str:
    if code in TYPES_BY_CODE:
        return TYPES_BY_CODE[code]
    if status >= 500:
        return "server_error"
    return TYPES.get(status, "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return {"error": {"message": message, "type": error_type(status, code), "param": param,
                      "code": code if code is not None else CODES.get(status)}}


def refused_response(exc) -> JSONResponse:
    """An HTTPException (``api.jobs.Refused`` included: its param and code) in OpenAI's shape."""
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else "the request was refused"
    code = getattr(exc, "code", None)
    if code == "model_not_found":
        status = 404  # as OpenAI answers an unknown model
        message = message.replace(MODELS_LIST, "GET /v1/models")  # this door's list of models
    return error_response(status, message, getattr(exc, "param", None), code, getattr(exc, "headers", None))


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# The tags of the request's tagged unions (a message's role, a content part's type, a
# response_format's type), which pydantic puts in an error's location after the union's place.
_UNION_TAGS = {"system", "developer", "user", "assistant", "tool", "text", "image_url", "refusal",
               "json_object", "json_schema", "message", "function_call", "function_call_output", "input_text",
               "output_text", "input_image"}


def param_path(loc: tuple | list) -> str | None:
    """A validation error's location as OpenAI names params: ``messages[0].content``."""
    out = ""
    previous: object = None
    for part in loc:
        tag = part in _UNION_TAGS and (isinstance(previous, int) or previous in ("response_format", "format"))
        previous = part
        if part == "body" or tag:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif (isinstance(part, str) and "[" not in part and not part[:1].isupper()
              and part not in ("str", "int", "float", "bool", "list", "dict")):
            out += ("." if out else "") + part
    return out or None


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation error as OpenAI answers a bad request: 400, the first error, its param."""
    errors = exc.errors()
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        # Not a field at fault: the body itself. FastAPI puts the position where the parse stopped last.
        where = first.get("loc", ())[-1:]
        detail = (first.get("ctx") or {}).get("error") or "it cannot be parsed"
        at = f" at character {where[0]}" if where and isinstance(where[0], int) else ""
        return error_response(400, f"the request body is not valid JSON: {detail}{at}", None, "invalid_json")
    cause = (first.get("ctx") or {}).get("error")
    param = getattr(cause, "param", None) or param_path(first.get("loc", ()))
    message = str(cause) if cause is not None and getattr(cause, "param", None) else first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    code = getattr(cause, "code", "unsupported_parameter") if getattr(cause, "param", None) else None
    return error_response(400, message, param, code)


class OpenAIErrors:
    """The door's ``ErrorShape`` (``api/doors.py``): every error on a ``/v1`` path in OpenAI's shape."""

    invalid_status = 400
    error_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}

    def invalid(self, exc: RequestValidationError) -> Response:
        return validation_response(exc)

    async def refused(self, request: Request, exc: HTTPException) -> Response:
        return refused_response(exc)

    def refusal(self, status: int, message: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        return error_response(status, message, None, code, headers)


async def handle_openai_error(request: Request, exc: OpenAIError) -> Response:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
