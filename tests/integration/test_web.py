"""The web page in a real headless Chromium: upload a study, follow it, open its overlays."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ctfleet.local.demo import phantom_studies

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background traffic, no first-run work.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_upload_follow_and_review_in_the_browser(browser, stack, tmp_path, request):
    high = next(s for s in phantom_studies() if s.label == "phantom-high")
    paths = []
    for name, data in high.files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(str(path))

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(stack.api_url + "/")
    assert page.title().startswith("ctfleet")
    # Signing in with the local Cognito: a wrong password is refused, the demo clinician's passes.
    assert page.locator("main").is_hidden()
    page.fill("#username", "demo-clinician")
    page.fill("#password", "not-the-password")
    page.click("#signin button[type=submit]")
    page.wait_for_function("document.querySelector('#signin-error').textContent.length > 0", timeout=10_000)
    assert page.locator("main").is_hidden()
    page.fill("#password", stack.pool.passwords["demo-clinician"])
    page.click("#signin button[type=submit]")
    page.locator("main").wait_for(state="visible", timeout=10_000)
    assert "clinician" in page.inner_text("#whoami") and "demo" in page.inner_text("#whoami")
    page.set_input_files("#files", paths)
    done = page.locator("#progress li", has_text="DONE")
    done.wait_for(timeout=180_000)
    text = done.inner_text()
    assert "HIGH" in text, text
    study_key = text.split()[1].rstrip(":")

    page.locator("#rows tr", has_text=study_key).click()
    page.wait_for_function("document.querySelectorAll('#overlays img').length > 0", timeout=30_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#overlays img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000)
    assert page.locator("#study-facts dd.HIGH").count() == 1
    shots = Path(request.config.rootpath) / ".pytest_cache" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "web-study.png"), full_page=True)
    assert errors == []
