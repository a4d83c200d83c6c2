"""The doors the API is entered by, as the core sees them.

A door is one wire format of the fleet: the SGP v4 one (``api/sgp/``) and OpenAI's
(``api/openai/``). Each is a package of its own that owns its wire models, its answers, how it
words errors and how its batch lines read, and hands the core a ``Door``: its routers, its
``ErrorShape``, its batch line formats. ``api/main.py`` mounts the doors; the core (every
other module of ``api/``) imports none of them, so a door is added without touching it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from api.batches import LineFormat


class ErrorShape(Protocol):
    """How a door words what went wrong before a job answered for itself."""

    #: The status of a request its wire models refuse (FastAPI's 422, or the door's own).
    invalid_status: int
    #: The JSON schema of its error bodies (the OpenAPI document's, ``api/openapi.py``).
    error_schema: ClassVar[dict[str, Any]]

    def invalid(self, exc: RequestValidationError) -> Response:
        """A request its wire models refused."""

    async def refused(self, request: Request, exc: HTTPException) -> Response:
        """An HTTPException (``api.jobs.Refused`` included, with its ``param`` and ``code``)."""

    def refusal(self, status: int, message: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """A refusal the API itself makes outside any route (a body too large, the state store away)."""


ExceptionHandler = Callable[[Request, Any], Awaitable[Response]]


@dataclass(frozen=True)
class Door:
    name: str
    #: The paths whose errors this door words ("" for every path no other door claims).
    paths: str
    errors: ErrorShape
    routers: Sequence[APIRouter]
    #: Where its routers are mounted.
    mount: str = ""
    line_formats: Sequence[LineFormat] = ()
    #: (method, path) of its routes that take multipart uploads (``api/limits.py``).
    uploads: Sequence[tuple[str, str]] = ()
    #: Handlers of the door's own exceptions.
    handlers: Mapping[type[Exception], ExceptionHandler] = field(default_factory=dict)


def door_of(doors: Sequence[Door], path: str) -> Door:
    """The door whose paths ``path`` is on: the longest claim wins."""
    return max((d for d in doors if path.startswith(d.paths)), key=lambda d: len(d.paths))
