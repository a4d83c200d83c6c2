"""A real browser for the console's tests: playwright driving the system's Chromium (Debian's
``chromium`` package: ``.ci/run`` installs it; nothing is downloaded). A failing test keeps a
screenshot of its page under ``var/screenshots/``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"


def chromium_path() -> str | None:
    for name in (os.environ.get("CHATFLEET_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


# Per module, not per session: playwright's sync API runs an event loop on this thread while it
# is open, and the tests after these call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        pytest.fail("no Chromium: install Debian's chromium package (apt-get install -y chromium); .ci/run does "
                    "this when run as root")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack, request) -> Iterator:
    context = browser.new_context(base_url=stack.base_url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
