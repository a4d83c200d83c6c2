"""The SGP v4 door: ``POST /v4/chat-completions`` as the contract states it
(``../shared/docs/sgp-chat-completions.md``), and the fleet's own resources in the same wire
format: ``/v4/jobs``, ``/v4/batches``, ``/v4/models``.

``wire.py`` validates the request and makes it door-neutral, ``answer.py`` words a synchronous
completion, ``errors.py`` words refusals (FastAPI's way, for every path no other door claims);
one module per resource holds its routes. ``door()`` hands them to ``api/main.py``.
"""

from __future__ import annotations

from api.doors import Door
from api.sgp import batches, chat, jobs, models
from api.sgp.errors import SGPErrors


def door() -> Door:
    return Door(name="sgp", paths="", errors=SGPErrors(),
                routers=(chat.router, jobs.router, batches.router, models.router),
                line_formats=(batches.LINE_FORMAT,), uploads=(("POST", "/v4/batches"),))
