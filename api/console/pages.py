"""``/console``: the fleet in the browser, served by the API itself (Jinja2 pages, escaped).

An account signs in with one of its keys and sees its usage (charts by day, by model, its use
against each limit and budget), its jobs (a job's tokens arriving live from its stream), its
batches (live progress, downloads, a JSONL upload) and files; the admin signs in with the admin
key and manages accounts, their limits and keys, and sees usage across accounts, the
deployments' health and the queues and workers.

Every page is rendered on the server with autoescaping: model output and user strings are
text, never markup. The only scripts are ``/static/console/console.js`` (live streams), under
a Content-Security-Policy that allows no inline script. Every form posts its session's CSRF
token; the sign-in form a double-submit one. Live parts read the API's own routes
(``/v4/jobs/{id}/stream``, ``/v4/batches/{id}/stream``, results and errors), which take the
session's cookie for reads (``api/deps.py``).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api import accounts, batches, files, sessions
from api.console.charts import bar_chart
from api.deps import RawRedisDep, RedisDep, SettingsDep
from api.jobs import public_view
from api.usage import budgets, default_range, group, read_usage
from shared import keys
from shared.catalog import Catalog
from shared.jobspec import JobSpec, UnreadableSpec
from shared.settings import Settings

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
PAGE = 50
STATUSES = ("queued", "throttled", "running", "succeeded", "failed", "cancelled")
SCAN_AT_MOST = 5000  # jobs read to fill one filtered page


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def render(request: Request, name: str, session: sessions.Session | None, code: int = 200, **context: Any):
    response = templates.TemplateResponse(request, name, {"session": session, **context}, status_code=code)
    response.headers.update(SECURITY_HEADERS)
    return response


def to_login() -> Response:
    return RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)


async def session_of(request: Request) -> sessions.Session | None:
    return await sessions.current(request.app.state.redis, request.app.state.settings,
                                  request.cookies.get(sessions.COOKIE))


def refused(request: Request, session: sessions.Session | None, status: int, message: str):
    return render(request, "error.html", session, code=status, message=message)


async def posted_by(request: Request, csrf: str | None, kind: str | None = None):
    """The session a form post comes from, its CSRF token checked; else the page that says no."""
    session = await session_of(request)
    if session is None:
        return None, to_login()
    if not sessions.csrf_ok(session.csrf, csrf):
        return None, refused(request, session, 403, "This form is out of date or was not sent by the console "
                                                    "(its CSRF token is missing or wrong): reload the page.")
    if kind is not None and session.kind != kind:
        return None, refused(request, session, 403, "This page is not for this session.")
    return session, None


# --- sign-in --------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request):
    token = sessions.new_login_token()
    response = render(request, "login.html", None, csrf=token, error=None)
    response.set_cookie(sessions.LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request),
                        path="/console", max_age=3600)
    return response


@router.post("/login")
async def login(request: Request, redis: RedisDep, settings: SettingsDep,
                key: Annotated[str, Form(max_length=500)] = "", csrf: Annotated[str, Form(max_length=200)] = ""):
    expected = request.cookies.get(sessions.LOGIN_COOKIE) or ""
    if not sessions.csrf_ok(expected, csrf):
        return refused(request, None, 403, "The sign-in form is out of date (its CSRF token is missing or wrong): "
                                           "open the sign-in page again.")
    opened = await sessions.sign_in(redis, settings, key.strip()) if key.strip() else None
    if opened is None:
        token = sessions.new_login_token()
        response = render(request, "login.html", None, code=401, csrf=token,
                          error="That key is not an account's key nor the admin key (or it was revoked).")
        response.set_cookie(sessions.LOGIN_COOKIE, token, httponly=True, samesite="strict",
                            secure=_secure(request), path="/console", max_age=3600)
        return response
    token, session = opened
    response = RedirectResponse("/console/admin" if session.kind == sessions.ADMIN else "/console/usage",
                                status_code=303, headers=SECURITY_HEADERS)
    # Path /: the console's scripts read the API's own streams with it (GET only, api/deps.py).
    response.set_cookie(sessions.COOKIE, token, httponly=True, samesite="strict", secure=_secure(request),
                        path="/", max_age=sessions.SESSION_SECONDS)
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = ""):
    session, refusal = await posted_by(request, csrf)
    if session is None:
        return refusal
    await sessions.sign_out(request.app.state.redis, session)
    response = to_login()
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


@router.get("")
async def home(request: Request):
    session = await session_of(request)
    if session is None:
        return to_login()
    return RedirectResponse("/console/admin" if session.kind == sessions.ADMIN else "/console/usage", status_code=303,
                            headers=SECURITY_HEADERS)


async def account_session(request: Request):
    session = await session_of(request)
    if session is None:
        return None, to_login()
    if session.caller is None:
        return None, RedirectResponse("/console/admin", status_code=303, headers=SECURITY_HEADERS)
    return session, None


async def admin_session(request: Request):
    session = await session_of(request)
    if session is None:
        return None, to_login()
    if session.kind != sessions.ADMIN:
        return None, refused(request, session, 403, "These pages are the admin's: sign in with the admin key.")
    return session, None


# --- usage ------------------------------------------------------------------------------------------


def _range(start: str | None, end: str | None) -> tuple[date, date, str | None]:
    try:
        s = date.fromisoformat(start) if start else None
        e = date.fromisoformat(end) if end else None
    except ValueError:
        return *default_range(None, None), "start and end are dates: YYYY-MM-DD"
    s, e = default_range(s, e)
    if s > e:
        return *default_range(None, None), f"start ({s}) is after end ({e})"
    if (e - s).days > 400:
        return *default_range(None, None), "the range may span at most 400 days"
    return s, e, None


def _days(start: date, end: date) -> list[str]:
    count = (end - start).days + 1
    return [(start + timedelta(days=i)).isoformat() for i in range(count)]


def usage_context(rows: list[dict], start: date, end: date) -> dict[str, Any]:
    by_day = {r["day"]: r for r in group(rows, {"day"})}
    days = _days(start, end) if (end - start).days <= 92 else sorted(by_day)
    series = {name: [(d, by_day[d][name] if d in by_day else 0) for d in days]
              for name in ("requests", "total_tokens", "cost_usd")}
    return {
        "start": start.isoformat(), "end": end.isoformat(),
        "charts": [bar_chart("requests", "Requests by day", series["requests"]),
                   bar_chart("tokens", "Tokens by day", series["total_tokens"]),
                   bar_chart("cost", "Cost (USD) by day", series["cost_usd"], money=True)],
        "by_day": [by_day[d] for d in sorted(by_day)],
        "by_model": sorted(group(rows, {"model"}), key=lambda r: -r["requests"]),
        "totals": group(rows, set())[0] if rows else None,
    }


async def current_use(redis, settings: Settings, account_id: str) -> list[dict]:
    """The account's limits and what it uses of each now."""
    limits = await redis.hmget(keys.account(account_id), "rpm", "tpm", "max_concurrency")
    req, _, total, conc = keys.account_rate(account_id)
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(req, now_ms - int(settings.rate_window_seconds * 1000), "+inf")
        pipe.get(total)
        pipe.zcount(conc, now_ms, "+inf")
        used = await pipe.execute()
    names = ("requests per window", "tokens per window", "jobs running at once")
    return [{"name": n, "limit": int(lim) if lim else None, "used": int(u or 0),
             "percent": min(100, round(100 * int(u or 0) / int(lim))) if lim else None}
            for n, lim, u in zip(names, limits, used)]


@router.get("/usage", response_class=HTMLResponse)
async def usage_page(request: Request, redis: RedisDep, settings: SettingsDep,
                     start: str | None = None, end: str | None = None):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    account_id = session.caller.account_id
    s, e, problem = _range(start, end)
    rows = await read_usage(redis, account_id, s, e)
    return render(request, "usage.html", session, problem=problem, account_id=account_id,
                  limits=await current_use(redis, settings, account_id), budgets=await budgets(redis, account_id),
                  **usage_context(rows, s, e))


# --- jobs ---------------------------------------------------------------------------------------------


async def jobs_page_of(redis, account_id: str, status: str | None, model: str | None,
                       before: float | None) -> tuple[list[dict], float | None]:
    """The account's jobs, newest first, created before ``before``, those with ``status`` and
    ``model`` only: a page of them and the cursor of the next (None at the end)."""
    high = f"({before!r}" if before is not None else "+inf"
    out: list[dict] = []
    scanned = 0
    cursor = high
    chunk = PAGE if not (status or model) else 500
    fields = ("id", "status", "model", "created_at", "finished_at", "usage", "batch_id", "priority")
    while len(out) <= PAGE and scanned < SCAN_AT_MOST:
        async with redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.zrevrangebyscore(keys.account_jobs(account_id, shard), cursor, "-inf", start=0, num=chunk,
                                      withscores=True)
            found = await pipe.execute()
        candidates = sorted((pair for listed in found for pair in listed), key=lambda p: -p[1])[:chunk]
        if not candidates:
            break
        if status or model:  # what the filter reads first, then the whole row of those it keeps
            async with redis.pipeline(transaction=False) as pipe:
                for job_id, _ in candidates:
                    pipe.hmget(keys.job(job_id), "status", "model")
                found_pairs = await pipe.execute()
            kept = [c for c, (st, mo) in zip(candidates, found_pairs)
                    if (not status or st == status) and (not model or mo == model)][:PAGE + 1 - len(out)]
        else:
            kept = candidates
        async with redis.pipeline(transaction=False) as pipe:
            for job_id, _ in kept:
                pipe.hmget(keys.job(job_id), *fields)
            records = await pipe.execute()
        scanned += len(candidates)
        for (_, score), values in zip(kept, records):
            record = {k: v for k, v in zip(fields, values) if v is not None}
            if not record.get("id"):
                continue  # expired meanwhile
            record["score"] = score
            out.append(record)
            if len(out) > PAGE:
                break
        cursor = f"({candidates[-1][1]!r}"
        if len(candidates) < chunk:
            break
    more = len(out) > PAGE
    page = out[:PAGE]
    for record in page:
        record["cost_usd"] = orjson.loads(record["usage"]).get("cost_usd") if record.get("usage") else None
        record["created"] = _when(record.get("created_at"))
    next_before = page[-1]["score"] if more and page else (
        float(cursor[1:]) if scanned >= SCAN_AT_MOST and page == out and cursor != high else None)
    return page, next_before


def _when(ts: str | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, redis: RedisDep, status: str | None = None, model: str | None = None,
                    before: Annotated[float | None, Query(allow_inf_nan=False)] = None):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    status = status or None
    model = model or None
    if status is not None and status not in STATUSES:
        return refused(request, session, 400, f"status must be one of {', '.join(STATUSES)}")
    jobs, next_before = await jobs_page_of(redis, session.caller.account_id, status, model, before)
    catalog: Catalog = request.app.state.catalog
    models = sorted(m.id for m in catalog if session.caller.models is None or m.id in session.caller.models)
    return render(request, "jobs.html", session, jobs=jobs, status=status, model=model, statuses=STATUSES,
                  models=models, next_before=next_before, first_page=before is None)


def _messages(spec_raw: str | None) -> list[dict[str, Any]]:
    try:
        spec = JobSpec.load(spec_raw or "")
    except UnreadableSpec:
        return []
    if spec.prompt is not None:
        return [{"role": "prompt", "content": spec.prompt}]
    if spec.embed is not None:
        return [{"role": "input", "content": text} for text in spec.embed.inputs]
    return [{"role": t.role, "content": t.content or ""} for t in spec.messages]


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    store = request.app.state.store
    record = await store.get_for(job_id, session.caller.account_id) if len(job_id) <= 100 else None
    if record is None:
        return refused(request, session, 404, f"No job {job_id} in this account.")
    job = public_view(record)
    result = job.get("result") or {}
    text = ""
    if isinstance(result, dict):
        message = (result.get("chat_completion") or {}).get("message") or {}
        text = message.get("content") or ""
    return render(request, "job.html", session, job=job, messages=_messages(record.get("spec")), text=text,
                  result_json=orjson.dumps(job["result"], option=orjson.OPT_INDENT_2).decode() if job["result"] else "",
                  error_json=orjson.dumps(job["error"], option=orjson.OPT_INDENT_2).decode() if job["error"] else "",
                  usage=job.get("usage"))


# --- batches and files --------------------------------------------------------------------------------


def _progress(batch: dict) -> int:
    counts = batch["request_counts"]
    if not counts["total"]:
        return 100 if batch["status"] in batches.STATUSES_DONE else 0
    return math.floor(100 * (counts["completed"] + counts["failed"]) / counts["total"])


@router.get("/batches", response_class=HTMLResponse)
async def batches_page(request: Request, redis: RedisDep, after: str | None = None):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    try:
        listed = await batches.page(redis, session.caller.account_id, PAGE, after)
    except batches.UnknownCursor:
        return refused(request, session, 400, "That page of batches is not one of yours.")
    for batch in listed["data"]:
        batch["progress"] = _progress(batch)
    return render(request, "batches.html", session, batches=listed["data"], has_more=listed["has_more"],
                  last_id=listed["last_id"], problem=None)


@router.post("/batches")
async def upload_batch(request: Request, redis: RedisDep, settings: SettingsDep,
                       file: UploadFile | None = None, csrf: Annotated[str, Form(max_length=200)] = "",
                       completion_window: Annotated[str, Form(max_length=10)] = "24h"):
    session, refusal = await posted_by(request, csrf)
    if session is None:
        return refusal
    if session.caller is None:
        return refused(request, session, 403, "Batches are an account's: sign in with an account's key.")
    if file is None or not file.filename:
        return refused(request, session, 400, "Choose a JSONL file to upload.")
    catalog: Catalog = request.app.state.catalog
    if session.caller.models is not None:
        catalog = catalog.only(session.caller.models)
    fields = {"key_id": session.caller.key_id} if session.caller.key_id else {}
    if session.caller.models is not None:
        fields["key_models"] = orjson.dumps(sorted(session.caller.models)).decode()
    try:
        batches.parse_window(completion_window)
        batch_id = await batches.create(redis, session.caller.account_id, _lines(file), {}, completion_window,
                                        catalog, settings, request.app.state.line_formats, fields or None)
    except batches.LineError as exc:
        return refused(request, session, 400, str(exc))
    return RedirectResponse(f"/console/batches/{batch_id}", status_code=303, headers=SECURITY_HEADERS)


def _lines(upload: UploadFile):
    upload.file.seek(0)
    for raw in upload.file:
        if raw.strip():
            yield raw.rstrip(b"\r\n")


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch_page(request: Request, batch_id: str, redis: RedisDep):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    record = await batches.get_own(redis, batch_id, session.caller.account_id) if len(batch_id) <= 100 else None
    if record is None:
        return refused(request, session, 404, f"No batch {batch_id} in this account.")
    batch = batches.view(record)
    batch["progress"] = _progress(batch)
    return render(request, "batch.html", session, batch=batch, done=batch["status"] in batches.STATUSES_DONE)


@router.get("/files", response_class=HTMLResponse)
async def files_page(request: Request, redis: RedisDep, after: str | None = None):
    session, refusal = await account_session(request)
    if session is None:
        return refusal
    try:
        listed = await files.page(redis, session.caller.account_id, PAGE, after, "desc", None)
    except LookupError:
        return refused(request, session, 400, "That page of files is not one of yours.")
    for f in listed["data"]:
        f["created"] = _when(str(f["created_at"]))
    return render(request, "files.html", session, files=listed["data"], has_more=listed["has_more"],
                  last_id=listed["last_id"])


# --- the admin's pages -----------------------------------------------------------------------------


@router.get("/admin", response_class=HTMLResponse)
async def admin_accounts(request: Request, redis: RedisDep):
    session, refusal = await admin_session(request)
    if session is None:
        return refusal
    return render(request, "admin_accounts.html", session, accounts=await accounts.list_accounts(redis))


def _limits_form(rpm: str, tpm: str, max_concurrency: str, budget_usd: str, budget_period: str) -> dict:
    """Limits from a form: an empty field removes the limit."""
    out: dict[str, Any] = {}
    for name, raw in (("rpm", rpm), ("tpm", tpm), ("max_concurrency", max_concurrency)):
        raw = raw.strip()
        if raw and (not raw.isdigit() or int(raw) < 1 or int(raw) > 10**12):
            raise ValueError(f"{name} must be a whole number from 1 (empty: no limit)")
        out[name] = int(raw) if raw else None
    raw = budget_usd.strip()
    try:
        value = float(raw) if raw else None
    except ValueError:
        raise ValueError("budget_usd must be a number of USD (empty: no budget)") from None
    if value is not None and not (0 <= value <= 9_000_000):
        raise ValueError("budget_usd must be between 0 and 9,000,000")
    out["budget_usd"] = value
    if budget_period not in ("day", "month", "total"):
        raise ValueError("budget_period must be day, month or total")
    out["budget_period"] = budget_period
    return out


LimitField = Annotated[str, Form(max_length=30)]


@router.post("/admin/accounts")
async def admin_create_account(request: Request, redis: RedisDep, csrf: Annotated[str, Form(max_length=200)] = "",
                               name: Annotated[str, Form(max_length=200)] = "", rpm: LimitField = "",
                               tpm: LimitField = "", max_concurrency: LimitField = "", budget_usd: LimitField = "",
                               budget_period: LimitField = "month"):
    session, refusal = await posted_by(request, csrf, sessions.ADMIN)
    if session is None:
        return refusal
    if not name.strip():
        return refused(request, session, 400, "Give the account a name.")
    try:
        limits = _limits_form(rpm, tpm, max_concurrency, budget_usd, budget_period)
    except ValueError as exc:
        return refused(request, session, 400, str(exc))
    account_id = await accounts.create_account(redis, name.strip(), limits)
    return RedirectResponse(f"/console/admin/accounts/{account_id}", status_code=303, headers=SECURITY_HEADERS)


@router.get("/admin/accounts/{account_id}", response_class=HTMLResponse)
async def admin_account(request: Request, account_id: str, redis: RedisDep):
    session, refusal = await admin_session(request)
    if session is None:
        return refusal
    account = await accounts.get_account(redis, account_id) if len(account_id) <= 100 else None
    if account is None:
        return refused(request, session, 404, f"No account {account_id}.")
    return await _account_page(request, session, redis, account)


@router.post("/admin/accounts/{account_id}/limits")
async def admin_set_limits(request: Request, account_id: str, redis: RedisDep,
                           csrf: Annotated[str, Form(max_length=200)] = "", rpm: LimitField = "", tpm: LimitField = "",
                           max_concurrency: LimitField = "", budget_usd: LimitField = "",
                           budget_period: LimitField = "month"):
    session, refusal = await posted_by(request, csrf, sessions.ADMIN)
    if session is None:
        return refusal
    if await accounts.get_account(redis, account_id) is None:
        return refused(request, session, 404, f"No account {account_id}.")
    try:
        limits = _limits_form(rpm, tpm, max_concurrency, budget_usd, budget_period)
    except ValueError as exc:
        return refused(request, session, 400, str(exc))
    await accounts.update_account(redis, account_id, limits=limits)
    return RedirectResponse(f"/console/admin/accounts/{account_id}", status_code=303, headers=SECURITY_HEADERS)


@router.post("/admin/accounts/{account_id}/keys", response_class=HTMLResponse)
async def admin_create_key(request: Request, account_id: str, redis: RedisDep,
                           csrf: Annotated[str, Form(max_length=200)] = "",
                           name: Annotated[str, Form(max_length=200)] = ""):
    session, refusal = await posted_by(request, csrf, sessions.ADMIN)
    if session is None:
        return refusal
    account = await accounts.get_account(redis, account_id)
    if account is None:
        return refused(request, session, 404, f"No account {account_id}.")
    key_id, secret = await accounts.add_api_key(redis, account_id, name=name.strip() or None)
    return await _account_page(request, session, redis, account, {"id": key_id, "key": secret})


async def _account_page(request: Request, session: sessions.Session, redis, account: dict,
                        created: dict | None = None):
    """An account's admin page; ``created``: a key just made, its secret shown this once."""
    return render(request, "admin_account.html", session, account=account, created=created,
                  keys=await accounts.list_api_keys(redis, account["id"]), budgets=await budgets(redis, account["id"]))


@router.post("/admin/keys/{key_id}/revoke")
async def admin_revoke_key(request: Request, key_id: str, redis: RedisDep,
                           csrf: Annotated[str, Form(max_length=200)] = ""):
    session, refusal = await posted_by(request, csrf, sessions.ADMIN)
    if session is None:
        return refusal
    key = await accounts.get_api_key(redis, key_id) if len(key_id) <= 100 else None
    if key is None or not await accounts.revoke_api_key(redis, key_id):
        return refused(request, session, 404, f"No key {key_id}.")
    return RedirectResponse(f"/console/admin/accounts/{key['account_id']}", status_code=303,
                            headers=SECURITY_HEADERS)


@router.get("/admin/usage", response_class=HTMLResponse)
async def admin_usage(request: Request, redis: RedisDep, start: str | None = None, end: str | None = None):
    session, refusal = await admin_session(request)
    if session is None:
        return refusal
    s, e, problem = _range(start, end)
    listed = await accounts.list_accounts(redis)
    rows: list[dict] = []
    for account in listed:
        rows.extend(await read_usage(redis, account["id"], s, e))
    names = {a["id"]: a["name"] for a in listed}
    by_account = sorted(group(rows, {"account_id"}), key=lambda r: -r["cost_usd"])
    for row in by_account:
        row["name"] = names.get(row["account_id"], "")
    return render(request, "admin_usage.html", session, problem=problem, by_account=by_account,
                  **usage_context(rows, s, e))


@router.get("/admin/fleet", response_class=HTMLResponse)
async def admin_fleet(request: Request, redis: RedisDep, raw: RawRedisDep, settings: SettingsDep):
    session, refusal = await admin_session(request)
    if session is None:
        return refusal
    catalog: Catalog = request.app.state.catalog
    deployments = sorted({name for m in catalog for name, _, _ in catalog.routes(m)})
    window = int(settings.failover_window_seconds)
    bucket = int(time.time() // window)
    since = time.time() - 3 * settings.worker_heartbeat_seconds
    async with redis.pipeline(transaction=False) as pipe:
        for name in deployments:
            pipe.pttl(keys.deployment_cooldown(name))
            pipe.hgetall(keys.deployment_health(name, str(bucket)))
        for queue in keys.QUEUES:
            pipe.llen(queue)
        pipe.zrangebyscore(keys.WORKERS, since, "+inf", withscores=True)
        found = await pipe.execute()
    rows = []
    for i, name in enumerate(deployments):
        ttl, health = found[2 * i], found[2 * i + 1]
        calls, failures = int(health.get("calls") or 0), int(health.get("failures") or 0)
        rows.append({"name": name, "cooling_s": round(ttl / 1000, 1) if ttl and ttl > 0 else None,
                     "calls": calls, "failures": failures})
    queues = dict(zip(keys.QUEUES, found[2 * len(deployments):2 * len(deployments) + len(keys.QUEUES)]))
    workers = []
    for hostname, beat in found[-1]:
        info = await redis.hgetall(keys.worker(hostname))
        workers.append({"hostname": hostname, "ago": round(time.time() - beat, 1), "queues": info.get("queues", ""),
                        "running": info.get("running", "")})
    return render(request, "admin_fleet.html", session, deployments=rows, queues=queues, workers=workers)
