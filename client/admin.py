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


Rpm = Annotated[int | None, typer.Option("--rpm", min=1, help="requests per minute", show_default=False)]
Tpm = Annotated[int | None, typer.Option("--tpm", min=1, help="tokens per minute", show_default=False)]
MaxConcurrency = Annotated[int | None, typer.Option("--max-concurrency", min=1, help="jobs running at once",
                                                    show_default=False)]
BudgetUsd = Annotated[float | None, typer.Option("--budget-usd", min=0, help="the most its jobs may cost per "
                                                 "--budget-period, in USD", show_default=False)]
BudgetPeriod = Annotated[str | None, typer.Option("--budget-period", help="day, month (the default) or total "
                                                  "(UTC calendar days and months)", show_default=False)]


def limits_of(rpm: int | None, tpm: int | None, max_concurrency: int | None, budget_usd: float | None,
              budget_period: str | None) -> dict:
    """The limits given on the command line (those not given are left as they are)."""
    if budget_period is not None and budget_period not in ("day", "month", "total"):
        raise typer.BadParameter("day, month or total", param_hint="--budget-period")
    given = (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency), ("budget_usd", budget_usd),
             ("budget_period", budget_period))
    return {k: v for k, v in given if v is not None}


@app.command("create-account")
def create_account(
    name: str, rpm: Rpm = None, tpm: Tpm = None, max_concurrency: MaxConcurrency = None,
    budget_usd: BudgetUsd = None, budget_period: BudgetPeriod = None,
    as_json: AsJson = False,
    admin_key: AdminKey = None,
) -> None:
    """Create an account; prints its id (then `chatfleet admin create-key ID`)."""
    if not name.strip():
        raise typer.BadParameter("the name may not be empty", param_hint="NAME")
    limits = limits_of(rpm, tpm, max_concurrency, budget_usd, budget_period)
    account = admin_api(admin_key).post("/v4/admin/accounts", json={"name": name, "limits": limits})
    print_json(account) if as_json else out(account["id"])


@app.command("set-limits")
def set_limits(
    account_id: str, rpm: Rpm = None, tpm: Tpm = None, max_concurrency: MaxConcurrency = None,
    budget_usd: BudgetUsd = None, budget_period: BudgetPeriod = None,
    as_json: AsJson = False, admin_key: AdminKey = None,
) -> None:
    """Change an account's limits (those given; the others stay)."""
    limits = limits_of(rpm, tpm, max_concurrency, budget_usd, budget_period)
    if not limits:
        raise typer.BadParameter("give at least one limit to change")
    account = admin_api(admin_key).request("PATCH", f"/v4/admin/accounts/{account_id}",
                                           json={"limits": limits}).json()
    print_json(account) if as_json else out(f"{account_id}: {account['limits']}")


@app.command("create-key")
def create_key(
    account_id: str,
    name: Annotated[str | None, typer.Option("--name", help="what the key is for", show_default=False)] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="a model the key may use (repeat it; "
                                                    "none: every model)", show_default=False)] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="when the key stops working (ISO 8601, "
                                                   "with a time zone)", show_default=False)] = None,
    rpm: Rpm = None, tpm: Tpm = None, max_concurrency: MaxConcurrency = None,
    budget_usd: BudgetUsd = None, budget_period: BudgetPeriod = None,
    admin_key: AdminKey = None,
) -> None:
    """Create an API key for an account, with its own limits, models and expiry if given;
    prints the key, which is shown this once."""
    body: dict = {"limits": limits_of(rpm, tpm, max_concurrency, budget_usd, budget_period)}
    if name is not None:
        body["name"] = name
    if model:
        body["models"] = model
    if expires_at is not None:
        body["expires_at"] = expires_at
    key = admin_api(admin_key).post(f"/v4/admin/accounts/{account_id}/api-keys", json=body)
    out(key["key"])
    note(f"key {key['id']} for {account_id}: shown this once, only its digest is stored")


@app.command("update-key")
def update_key(
    key_id: str,
    name: Annotated[str | None, typer.Option("--name", show_default=False)] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="the models the key may use (repeat it)",
                                                    show_default=False)] = None,
    all_models: Annotated[bool, typer.Option("--all-models", help="let the key use every model")] = False,
    expires_at: Annotated[str | None, typer.Option("--expires-at", show_default=False)] = None,
    rpm: Rpm = None, tpm: Tpm = None, max_concurrency: MaxConcurrency = None,
    budget_usd: BudgetUsd = None, budget_period: BudgetPeriod = None,
    as_json: AsJson = False, admin_key: AdminKey = None,
) -> None:
    """Change an API key's name, limits, models or expiry (PATCH /v4/admin/api-keys/ID)."""
    body: dict = {}
    limits = limits_of(rpm, tpm, max_concurrency, budget_usd, budget_period)
    if limits:
        body["limits"] = limits
    if name is not None:
        body["name"] = name
    if model and all_models:
        raise typer.BadParameter("--model or --all-models, not both")
    if model or all_models:
        body["models"] = None if all_models else model
    if expires_at is not None:
        body["expires_at"] = expires_at
    if not body:
        raise typer.BadParameter("give at least one thing to change")
    key = admin_api(admin_key).request("PATCH", f"/v4/admin/api-keys/{key_id}", json=body).json()
    print_json(key) if as_json else out(f"{key_id}: {key.get('name') or ''} {key['limits']} models={key['models']}")


@app.command("accounts")
def accounts(as_json: AsJson = False, admin_key: AdminKey = None) -> None:
    """Every account with its limits (GET /v4/admin/accounts)."""
    data = admin_api(admin_key).get("/v4/admin/accounts").get("data") or []
    if as_json:
        print_json(data)
        return
    columns = ("rpm", "tpm", "max_concurrency", "budget_usd", "budget_period")
    rows = [[a.get("id"), a.get("name"), *((a.get("limits") or {}).get(k) for k in columns)] for a in data]
    print_table(["id", "name", *columns], rows, right={"rpm", "tpm", "max_concurrency", "budget_usd"})


@app.command("revoke-key")
def revoke_key(key_id: str, admin_key: AdminKey = None) -> None:
    """Revoke an API key at once: the next request with it is refused."""
    admin_api(admin_key).request("DELETE", f"/v4/admin/api-keys/{key_id}")
    out(f"{key_id} revoked")
