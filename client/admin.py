"""``chatfleet admin``: accounts and API keys, through the admin API (``/v4/admin``).

Needs the fleet's admin key (``CHATFLEET_ADMIN_API_KEY`` or ``--admin-key``); like every other
command it talks only to the API, so an operator needs no access to Redis.
"""

from __future__ import annotations

from typing import Annotated

import typer

from client.chat import AsJson
from client.http import api, configure
from client.output import note, out, print_json, print_table

app = typer.Typer(help="Accounts and API keys, through the admin API (needs the admin key).",
                  no_args_is_help=True)


MISSING_KEY = "no admin API key: set CHATFLEET_ADMIN_API_KEY or pass --admin-key"
# Taken before the command (``chatfleet admin --admin-key K accounts``) and after it
# (``chatfleet admin accounts --admin-key K``), where users put it.
AdminKey = Annotated[str | None, typer.Option("--admin-key", help="the admin API key", show_default=False)]


@app.callback()
def admin(
    admin_key: Annotated[str | None, typer.Option("--admin-key", envvar="CHATFLEET_ADMIN_API_KEY",
                                                  show_envvar=True, help="the admin API key",
                                                  show_default=False)] = None,
) -> None:
    configure(api().with_key(admin_key, MISSING_KEY), role="admin")


def admin_api(admin_key: str | None):
    """The admin API, with the key given after the command when there is one."""
    if admin_key:
        configure(api().with_key(admin_key, MISSING_KEY), role="admin")
    return api("admin")


@app.command("create-account")
def create_account(
    name: str,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute", show_default=False)] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="tokens per minute", show_default=False)] = None,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", min=1, help="jobs running at once",
                                                        show_default=False)] = None,
    as_json: AsJson = False,
    admin_key: AdminKey = None,
) -> None:
    """Create an account; prints its id (then `chatfleet admin create-key ID`)."""
    if not name.strip():
        raise typer.BadParameter("the name may not be empty", param_hint="NAME")
    limits = {k: v for k, v in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency)) if v is not None}
    account = admin_api(admin_key).post("/v4/admin/accounts", json={"name": name, "limits": limits})
    print_json(account) if as_json else out(account["id"])


@app.command("create-key")
def create_key(account_id: str, admin_key: AdminKey = None) -> None:
    """Create an API key for an account; prints the key, which is shown this once."""
    key = admin_api(admin_key).post(f"/v4/admin/accounts/{account_id}/api-keys")
    out(key["key"])
    note(f"key {key['id']} for {account_id}: shown this once, only its digest is stored")


@app.command("accounts")
def accounts(as_json: AsJson = False, admin_key: AdminKey = None) -> None:
    """Every account with its limits (GET /v4/admin/accounts)."""
    data = admin_api(admin_key).get("/v4/admin/accounts").get("data") or []
    if as_json:
        print_json(data)
        return
    rows = [[a.get("id"), a.get("name"), *((a.get("limits") or {}).get(k) for k in ("rpm", "tpm", "max_concurrency"))]
            for a in data]
    print_table(["id", "name", "rpm", "tpm", "max_concurrency"], rows, right={"rpm", "tpm", "max_concurrency"})


@app.command("revoke-key")
def revoke_key(key_id: str, admin_key: AdminKey = None) -> None:
    """Revoke an API key at once: the next request with it is refused."""
    admin_api(admin_key).request("DELETE", f"/v4/admin/api-keys/{key_id}")
    out(f"{key_id} revoked")
