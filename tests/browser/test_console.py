"""The console (``/console``) in a real browser, against the real fleet (Redis, workers, the API
over HTTP): sign-in, usage charts equal to ``GET /v4/usage``, a job's tokens arriving live, an
uploaded batch's bar reaching 100 %, a revoked key's session refused, a hostile completion
inert, a form post without its CSRF token refused, the admin's pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import FAMILY_MODELS, FAST, new_account, poll_until_done, wait_for

pytestmark = pytest.mark.integration


def client_usage(stack, key: str) -> list[dict]:
    with stack.client(key) as client:
        return client.get("/v4/usage").json()["data"]


def sign_in(page, key: str) -> None:
    page.goto("/console")
    assert page.url.endswith("/console/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_an_account_signs_in_and_its_charts_show_what_the_usage_api_says(stack, page):
    _, key = new_account(stack)
    with stack.client(key) as client:
        for max_tokens in (3, 5, 7):
            job = client.post("/v4/jobs", json={**FAST, "model_parameters": {"max_tokens": max_tokens}}).json()
            poll_until_done(client, job["id"])
        usage = client.get("/v4/usage", params={"group_by": "day"}).json()["data"]
    sign_in(page, key)
    assert page.url.endswith("/console/usage")  # an account lands on its usage
    today = datetime.now(UTC).date().isoformat()
    (row,) = [r for r in usage if r["day"] == today]
    for chart, field in (("requests", "requests"), ("tokens", "total_tokens"), ("cost", "cost_usd")):
        bar = page.locator(f'[data-chart="{chart}"] rect[data-day="{today}"]')
        assert float(bar.get_attribute("data-value")) == pytest.approx(row[field]), chart
    cells = page.locator(f'#by-day tr[data-day="{today}"]')
    assert cells.locator('[data-col="requests"]').inner_text() == str(row["requests"]) == "3"
    assert float(cells.locator('[data-col="cost"]').inner_text()) == pytest.approx(row["cost_usd"])
    assert page.locator('#by-model tr[data-model="gpt-4o-mini"] [data-col="requests"]').inner_text() == "3"
    assert not page.errors
    # The session's cookie reads the API as its key does (the console's streams), and only reads.
    assert page.request.get("/v4/usage").json()["data"] == client_usage(stack, key)
    assert page.request.post("/v4/jobs", data=FAST).status == 401
    # Jobs, newest first, filtered by status.
    page.click("text=Jobs")
    assert page.locator("#jobs tbody tr").count() == 3
    page.select_option("select[name=status]", "failed")
    page.click("text=Filter")
    assert "No jobs with these filters" in page.locator("#jobs").inner_text()


def test_a_jobs_tokens_appear_live_and_again_after_a_reload(stack, fake, page):
    _, key = new_account(stack)
    fake.script([{"tokens_per_s": 4, "tokens": 12}], family="anthropic")  # ~3 s of tokens
    body = {**FAST, "model": FAMILY_MODELS["anthropic"], "model_parameters": {"max_tokens": 12}}
    sign_in(page, key)
    with stack.client(key) as client:
        job_id = client.post("/v4/jobs", json=body).json()["id"]
        page.goto(f"/console/jobs/{job_id}")
        tokens = page.locator("#tokens")
        wait_for(lambda: "tok1" in tokens.inner_text(), timeout=30, what="the first tokens on the page")
        assert client.get(f"/v4/jobs/{job_id}").json()["status"] == "running"  # live, not the finished page
        assert "tok11" not in tokens.inner_text()
        page.reload()  # the stream is followed again from its start
        wait_for(lambda: "tok11" in page.locator("#tokens").inner_text(), timeout=30, what="every token")
        wait_for(lambda: page.locator("#status").inner_text() == "succeeded", timeout=30, what="the end")
        text = poll_until_done(client, job_id)["result"]["chat_completion"]["message"]["content"]
    assert page.locator("#tokens").inner_text() == text


def test_an_uploaded_batchs_bar_reaches_100_percent(stack, page, tmp_path):
    _, key = new_account(stack)
    lines = [f'{{"custom_id": "r{i}", "url": "/v4/chat-completions", "body": {{"model": "gpt-4o-mini", '
             f'"messages": [{{"content": "question {i}"}}], "model_parameters": {{"max_tokens": 3}}}}}}'
             for i in range(30)]
    upload = tmp_path / "lines.jsonl"
    upload.write_text("\n".join(lines) + "\n")
    sign_in(page, key)
    page.goto("/console/batches")
    page.set_input_files("input[name=file]", str(upload))
    page.click("#upload button[type=submit]")
    page.wait_for_url(re.compile(r"/console/batches/batch_"))
    wait_for(lambda: page.locator("#batch-percent").inner_text() == "100 %", timeout=60, what="the bar at 100 %")
    assert page.locator("#batch-progress").evaluate("p => p.value") == 100
    assert page.locator("#batch-completed").inner_text() == "30"
    wait_for(lambda: page.locator("#batch-status").inner_text() == "completed", timeout=30, what="completed")
    batch_id = page.url.rsplit("/", 1)[1]
    with page.expect_download() as download:
        page.click("text=Download results (JSONL)")
    results = download.value.path().read_text().splitlines()
    assert len(results) == 30 and batch_id
    page.goto("/console/batches")
    assert page.locator(f'#batches tr[data-batch="{batch_id}"] progress').evaluate("p => p.value") == 100


def test_a_revoked_keys_session_is_refused(stack, page):
    account_id, key = new_account(stack)
    sign_in(page, key)
    assert page.url.endswith("/console/usage")
    with stack.admin() as admin:
        (listed,) = admin.get(f"/v4/admin/accounts/{account_id}/api-keys").json()["data"]
        assert admin.delete(f"/v4/admin/api-keys/{listed['id']}").status_code == 204
    page.goto("/console/jobs")
    assert page.url.endswith("/console/login")  # the session ended with its key
    response = page.request.get("/v4/usage")  # nor does its cookie read the API any more
    assert response.status == 401


def test_a_hostile_completion_is_shown_as_text(stack, fake, page):
    _, key = new_account(stack)
    hostile = "<script>window.pwned=1</script> <img src=x onerror=window.pwned=2> <b>bold</b>"
    fake.script([{"text": hostile}], family="anthropic", stream=True)
    body = {**FAST, "model": FAMILY_MODELS["anthropic"], "model_parameters": {"max_tokens": 20},
            "messages": [{"content": "<img src=y onerror=window.pwned=3>"}]}
    with stack.client(key) as client:
        job_id = client.post("/v4/jobs", json=body).json()["id"]
        poll_until_done(client, job_id)
    sign_in(page, key)
    page.goto(f"/console/jobs/{job_id}")
    wait_for(lambda: "<script>" in page.locator("#tokens").inner_text(), timeout=30, what="the answer as text")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#tokens img, #tokens script, #tokens b, .messages img").count() == 0
    assert "<img src=y onerror=window.pwned=3>" in page.locator(".messages").inner_text()
    response = page.request.get(f"/console/jobs/{job_id}")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>window.pwned" not in response.text() and "&lt;script&gt;" in response.text()


def test_a_form_post_without_its_csrf_token_is_refused(stack, page):
    sign_in(page, ADMIN_KEY)
    assert page.url.endswith("/console/admin")
    for form in ({"name": "sneaky"}, {"name": "sneaky", "csrf": "not-the-token"}):
        refused = page.request.post("/console/admin/accounts", form=form)
        assert refused.status == 403 and "CSRF" in refused.text()
    with stack.admin() as admin:
        assert "sneaky" not in [a["name"] for a in admin.get("/v4/admin/accounts").json()["data"]]
    # Nor is the sign-in form taken without its own token.
    assert page.request.post("/console/login", form={"key": ADMIN_KEY}).status == 403


def test_the_admin_creates_an_account_and_a_key_shown_once_then_revokes_it(stack, page):
    sign_in(page, ADMIN_KEY)
    page.fill("#new-account input[name=name]", "console-team")
    page.fill("#new-account input[name=rpm]", "120")
    page.fill("#new-account input[name=budget_usd]", "25")
    page.click("#new-account button[type=submit]")
    page.wait_for_url(re.compile(r"/console/admin/accounts/acct_"))
    account_id = page.url.rsplit("/", 1)[1]
    with stack.admin() as admin:
        limits = admin.get(f"/v4/admin/accounts/{account_id}").json()["limits"]
    assert (limits["rpm"], limits["budget_usd"], limits["budget_period"]) == (120, 25.0, "month")
    page.fill("#new-key-form input[name=name]", "ci")
    page.click("#new-key-form button[type=submit]")
    secret = page.locator("#new-key").inner_text().strip()
    assert secret.startswith("cf-")
    with stack.client(secret) as client:
        assert client.get("/v4/usage").status_code == 200
    page.goto(f"/console/admin/accounts/{account_id}")
    assert secret not in page.content()  # shown that once only
    page.click("#keys button.danger")
    page.wait_for_load_state()
    with stack.client(secret) as client:
        assert client.get("/v4/usage").status_code == 401
    page.goto("/console/admin/fleet")
    assert page.locator("#workers tbody tr").count() >= 1 and "chatfleet.interactive" in page.content()
    page.goto("/console/admin/usage")
    assert page.locator("#by-account").count() == 1
    # An account's pages are not the admin's, nor the admin's an account's.
    page.goto("/console/usage")
    assert page.url.endswith("/console/admin")
