"""Request bodies are bounded before they are read: a 413 that says the limit, never a body parsed
whole and refused after.

``CHATFLEET_MAX_BODY_BYTES`` (16 MiB) bounds every body but uploads, which
``CHATFLEET_MAX_UPLOAD_BYTES`` (512 MiB) bounds: the routes each door names (``Door.uploads``: a
batch's file, ``POST /v4/batches``, and a file, ``POST /v1/files``, also bounded by
``CHATFLEET_FILE_MAX_BYTES``), when the body is multipart. A declared
``Content-Length`` past the limit is answered at once; a body sent without one is counted as it
arrives and cut off at the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from api.doors import Door, door_of
from shared.settings import Settings


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over its route's limit, worded by the path's door."""

    def __init__(self, app, settings: Settings, doors: Sequence[Door]):
        self.app = app
        self.body_limit = settings.max_body_bytes
        self.upload_limit = settings.max_upload_bytes
        self.doors = doors
        self.uploads = {upload for door in doors for upload in door.uploads}

    def _is_upload(self, scope) -> bool:
        if (scope.get("method"), scope.get("path", "").rstrip("/")) not in self.uploads:
            return False
        content_type = dict(scope.get("headers") or ()).get(b"content-type", b"")
        return content_type.startswith(b"multipart/form-data")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if self._is_upload(scope) else self.body_limit
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        too_large = False
        started = False

        async def counted_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True  # the app hears the client go; the client hears why
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope, receive, send, limit: int) -> None:
        message = f"the request body is larger than {limit} bytes, the most this route takes"
        response = door_of(self.doors, scope.get("path", "")).errors.refusal(
            413, message, "request_too_large", {"connection": "close"})
        await response(scope, receive, send)
