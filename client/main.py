"""``chatfleet``: the fleet from the command line, one module per command group.

Talks only to the API, over HTTP: base URL and key from ``CHATFLEET_BASE_URL`` /
``CHATFLEET_API_KEY`` or ``--base-url`` / ``--api-key``; ``chatfleet admin ...`` uses the admin
API with ``CHATFLEET_ADMIN_API_KEY`` / ``--admin-key``.

Results go to stdout (answers, ids, tables, JSON, JSONL, CSV); progress and notes go to stderr.
Any failure is one line on stderr, ``error: ...``, and exit code 1 (2 for a usage error), never a
traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated

import typer

from client import admin, batches, chat, jobs, models, usage
from client.http import Api, close_all, configure
from client.output import CLIError, note

DEFAULT_BASE_URL = "http://127.0.0.1:8000"

app = typer.Typer(
    name="chatfleet", help="Command-line client of a chatfleet LLM fleet.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(chat.chat)
app.add_typer(jobs.app, name="jobs")
app.add_typer(batches.app, name="batch")
app.command()(usage.usage)
app.command()(models.models)
app.add_typer(admin.app, name="admin")


@app.callback()
def root(
    base_url: Annotated[str, typer.Option("--base-url", envvar="CHATFLEET_BASE_URL", show_envvar=True,
                                          help="the fleet's API")] = DEFAULT_BASE_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="CHATFLEET_API_KEY", show_envvar=True,
                                                help="API key (x-api-key)", show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for an answer")] = 620.0,
) -> None:
    configure(Api(base_url, api_key, timeout))


def main() -> None:
    code = 0
    try:
        app(prog_name="chatfleet")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CLIError as exc:
        note(f"error: {exc}")
        code = 1
    except KeyboardInterrupt:
        note("error: interrupted")
        code = 130
    except BrokenPipeError:
        # stdout went away (| head): nothing left to say to anyone.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        code = 1
    except Exception as exc:  # noqa: BLE001 - a bug, but still one line and no traceback
        note(f"error: unexpected {type(exc).__name__}: {exc}")
        code = 1
    finally:
        close_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
