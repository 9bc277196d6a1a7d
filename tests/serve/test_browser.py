"""The upload page in real headless Chromium: pick a file, read the verdict the page shows."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import requests

from .serving_helpers import free_port, running, start_predictor

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
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
    expected = requests.post(
        f"{web.url}/api/predict", files={"image": ("probe.jpg", image.read_bytes())}, timeout=60
    ).json()

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


@pytest.fixture(scope="module")
def synthetic_web(tiny_model, registered_model, tmp_path_factory):
    """A predictor serving a model whose metadata says synthetic_data: true, and a web app in front of it."""
    import mlflow

    from core.modelstore import ModelMetadata

    folder = tmp_path_factory.mktemp("synthetic") / "model"
    metadata = ModelMetadata(
        threshold=0.5,
        image_size=32,
        architecture=tiny_model.name,
        data_source="synthetic",
        synthetic_data=True,
    )
    mlflow.keras.save_model(tiny_model, str(folder), metadata=metadata.to_dict(), pip_requirements=[])
    logs = tmp_path_factory.mktemp("synthetic-logs")
    manager, predictor_url = start_predictor(
        registered_model, logs / "predictor.log", "--model-uri", str(folder)
    )
    with manager:
        port = free_port()
        env = {
            "PREDICTOR_URL": predictor_url,
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_WORKERS": "1",
        }
        url = f"http://127.0.0.1:{port}"
        with running([sys.executable, "-m", "flask_app"], f"{url}/healthz", logs / "web.log", env):
            yield url


def test_drag_and_drop_gives_the_verdict(browser, web, sample_images):
    data = sample_images.probe[1]
    expected = requests.post(f"{web.url}/api/predict", files={"image": ("d.jpg", data)}, timeout=60).json()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        # A real drop event on the drop zone, carrying the file, as a browser builds it for a dragged file.
        page.evaluate(
            """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            const zone = document.getElementById("drop-zone");
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
            list(data),
        )
        page.locator("#result").wait_for(state="visible", timeout=30_000)
        assert page.locator("#verdict").get_attribute("data-label") == expected["label"]
    finally:
        page.close()


def test_synthetic_model_shows_a_loud_notice(browser, synthetic_web, sample_images, tmp_path):
    image = tmp_path / "probe.jpg"
    image.write_bytes(sample_images.probe[0])
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(synthetic_web)
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=30_000)
        notice = page.locator("#synthetic-notice")
        assert notice.is_visible()
        assert "synthetic" in notice.inner_text()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "synthetic-390.png"), full_page=True)
    finally:
        page.close()
