"""The dashboard in a real browser: the system's headless Chromium, driven by Playwright, against
a running `klein serve` with jobs in every state. It checks what a person sees: a failed job's
reason, a completed job's image, a running job's progress moving, a hostile prompt shown as text
and never run; and it leaves a screenshot in the test's output."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from psycopg.types.json import Jsonb

from tests.e2e.servekit import OUTPUT_SIZE, execute, insert_job, wait_for_job
from tests.integration.dashkit import HOSTILE_PROMPT, OOM, RETRY_ERROR, progress, seed_every_state

CHROMIUM = Path("/usr/bin/chromium")
SEEN_WITHIN_MS = 15_000
TOKEN = "browser-dashboard-token-42"


def chromium(path: Path = CHROMIUM) -> Path:
    """The system's Chromium; a skip on a developer's machine without it, a failure in CI."""
    if path.is_file():
        return path
    reason = f"no Chromium at {path}: apt-get install -y --no-install-recommends chromium"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test may not skip)")
    pytest.skip(reason)


@pytest.fixture
def browser(migrated_url: str) -> Iterator[Browser]:
    """Headless Chromium (no sandbox when running as root, as in CI containers). Started after
    the database (Playwright's sync API runs an event loop, inside which asyncio.run would fail)."""
    executable = chromium()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=args
        )
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page, with the dialogs it opened and the script errors it raised."""

    def __init__(self, browser: Browser) -> None:
        self.page: Page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def row(self, job_id: str, part: str):
        return self.page.locator(f'tr[data-job-id="{job_id}"] {part}')


def test_a_person_sees_failures_images_and_progress_moving(browser, serve, migrated_url, tmp_path):
    klein = serve("e2e-dashboard")
    done_id, _ = insert_job(migrated_url, "make the sky purple")
    wait_for_job(migrated_url, done_id, lambda row: row["status"] == "completed", "it completes")
    seeded = seed_every_state(migrated_url)
    running = seeded.jobs["processing"]
    watched = Watched(browser)

    watched.page.goto(f"{klein.base_url}/")

    expect(watched.row(seeded.jobs["failed"], ".error")).to_have_text(OOM, timeout=SEEN_WITHIN_MS)
    expect(watched.row(seeded.jobs["delayed"], ".error")).to_have_text(f"retrying: {RETRY_ERROR}")
    reason = watched.page.locator("#failures tr", has_text=OOM)
    expect(reason.locator(".count")).to_have_text("2")
    image = f'tr[data-job-id="{done_id}"] img.thumb'
    watched.page.wait_for_function(
        "(selector) => { const img = document.querySelector(selector);"
        " return img !== null && img.complete && img.naturalWidth > 0; }",
        arg=image,
        timeout=SEEN_WITHIN_MS,
    )
    assert watched.page.eval_on_selector(image, "img => img.naturalWidth") == OUTPUT_SIZE[0]
    expect(watched.row(done_id, ".status")).to_have_text("completed")
    expect(watched.row(done_id, ".timeline .segment").first).to_be_attached()
    expect(watched.row(running, ".progress")).to_contain_text("sampling · step 2/4")

    moved = Jsonb(progress(3))
    execute(
        migrated_url,
        "UPDATE works SET progress = %s WHERE id = %s",
        (moved, seeded.works["processing"]),
    )

    expect(watched.row(running, ".progress")).to_contain_text(
        "sampling · step 3/4", timeout=SEEN_WITHIN_MS
    )
    hostile = watched.row(seeded.jobs["hostile"], ".prompt")
    expect(hostile).to_have_text(HOSTILE_PROMPT)
    assert hostile.locator("img, script, b").count() == 0
    assert watched.page.evaluate("window.__pwned") is None
    assert watched.dialogs == []
    assert watched.errors == []
    screenshot = tmp_path / "dashboard.png"
    watched.page.screenshot(path=str(screenshot), full_page=True)
    print(f"dashboard screenshot: {screenshot}")
    assert screenshot.stat().st_size > 0


def test_the_token_in_the_address_lets_the_browser_in_and_leaves_it(browser, serve):
    klein = serve("e2e-dashboard-token", DASHBOARD_TOKEN=TOKEN)
    watched = Watched(browser)

    refused = watched.page.goto(f"{klein.base_url}/")
    assert refused is not None
    assert refused.status == 401

    watched.page.goto(f"{klein.base_url}/?token={TOKEN}")

    assert watched.page.url == f"{klein.base_url}/"
    expect(watched.page.locator("#connection")).to_contain_text("live", timeout=SEEN_WITHIN_MS)
    cookies = watched.page.context.cookies()
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
    assert TOKEN not in cookies[0]["value"]
    assert watched.page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it


def test_without_chromium_a_developer_skips_and_ci_fails(monkeypatch, tmp_path):
    missing = tmp_path / "no-chromium"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        chromium(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        chromium(missing)
