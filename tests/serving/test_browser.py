"""The upload page in real headless Chromium: pick a file, read the verdict the page shows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("DEEPGUARD_SCREENSHOTS", "/tmp/deepguard-screenshots"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: the browser test needs Debian chromium (`make chromium` as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)], ids=["desktop", "phone"])
def test_upload_shows_the_verdict(browser, web, registered_model, sample_images, tmp_path, width, height):
    image = tmp_path / "probe.jpg"
    image.write_bytes(sample_images.probe[-1])
    expected = requests.post(f"{web.url}/api/predict", files={"image": ("probe.jpg", image.read_bytes())},
                             timeout=60).json()

    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(web.url)
        page.locator("#model-version").filter(has_text=registered_model.version).wait_for(timeout=15_000)
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=30_000)
        assert page.locator("#verdict").get_attribute("data-label") == expected["label"]
        shown = page.locator("#probability").inner_text()
        assert shown == f"{round(expected['fake_probability'] * 1000) / 10:.1f}%"
        assert page.locator("#preview").is_visible()
        assert page.locator("#synthetic-notice").is_hidden()
        # Usable on a phone: nothing wider than the viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"verdict-{width}.png"), full_page=True)

        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        page.set_input_files("#file-input", str(text))
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=15_000)
        assert "not an image" in error.inner_text()
        assert page.locator("#result").is_hidden()
        page.screenshot(path=str(SCREENSHOTS / f"error-{width}.png"), full_page=True)
    finally:
        page.close()
