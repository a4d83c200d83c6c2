"""The OpenAI door: ``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``, ``/v1/models``,
``/v1/files`` and ``/v1/batches`` in
OpenAI's wire format, on the same jobs, limits, usage and streams as the SGP v4 routes, so that
the official ``openai`` SDK, and what is built on it, works unchanged.

``wire.py`` maps OpenAI's requests and answers onto the fleet's, ``errors.py`` words every error
on a ``/v1`` path in OpenAI's shape; one module per resource holds its routes. ``door()`` hands
them to ``api/main.py``, which mounts them under ``/v1``.
"""

from __future__ import annotations

from api.doors import Door
from api.openai import batches, chat, embeddings, files, models, responses
from api.openai.errors import OpenAIError, OpenAIErrors, handle_openai_error

MOUNT = "/v1"


def door() -> Door:
    return Door(name="openai", paths=MOUNT + "/", errors=OpenAIErrors(), mount=MOUNT,
                routers=(chat.router, responses.router, embeddings.router, models.router, files.router, batches.router),
                line_formats=batches.LINE_FORMATS, uploads=(("POST", MOUNT + "/files"),),
                handlers={OpenAIError: handle_openai_error})
