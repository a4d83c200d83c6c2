"""How the SGP door words a synchronous completion (``api/completion.py`` runs it): the job's
result as it is, SSE chunks as the workers publish them (no ``[DONE]``), and errors FastAPI's
way (``{"detail": ...}``), as the contract states."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from api.completion import Answer
from api.sse import sse


class SGPAnswer(Answer):
    """The SGP v4 contract: SSE chunks as the workers publish them, no ``[DONE]``."""

    route = "/v4/chat-completions"

    def failure(self, status, message, code=None, headers=None, **extra):
        body: dict[str, Any] = {"detail": message}
        if code is not None:
            body["code"] = code
        return JSONResponse({**body, **extra}, status_code=status, headers=headers)

    def result(self, body, headers):
        return JSONResponse(body, headers=headers)

    def stream_token(self, data):
        return sse(data)

    def stream_error(self, data):
        return sse(data, event="error")

    def stream_shutdown(self, job_id, seq):
        return self.stream_error(orjson.dumps({
            "code": "server_shutting_down",
            "message": f"this API instance is restarting; the job continues: follow "
                       f"/v4/jobs/{job_id}/stream with Last-Event-ID: {seq}",
            "job_id": job_id, "last_event_id": seq}).decode())
