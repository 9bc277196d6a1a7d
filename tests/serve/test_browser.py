"""The upload page in real headless Chromium: verdicts, the batch table, CSV, heatmaps and feedback."""

from __future__ import annotations

import base64
import csv
import email.parser
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

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
WIDTHS = pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)], ids=["desktop", "phone"])
WORDS = {"FAKE": "Likely AI-generated", "REAL": "Likely a real photo", "UNCERTAIN": "Can't tell"}
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found: the browser test needs Debian chromium (`make chromium` as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")  # as tests/serve/test_prometheus.py does
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def predictions(web, files: list[Path], **form: str) -> dict:
    """What the web app answers for ``files``: the numbers the page must show."""
    parts = [("image", (path.name, path.read_bytes())) for path in files]
    response = requests.post(f"{web.url}/api/predictions", files=parts, data=form, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def shown_percent(probability: float) -> str:
    """How the page writes P(FAKE): one decimal, but never as certain (100.0% or 0.0%)."""
    tenths = round(probability * 1000)
    return "> 99.9%" if tenths >= 1000 else "< 0.1%" if tenths <= 0 else f"{tenths / 10:.1f}%"


def write_probes(sample_images, folder: Path, count: int) -> list[Path]:
    paths = []
    for i, data in enumerate(sample_images.probe[:count]):
        path = folder / f"probe-{i:02d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def fits_the_viewport(page, width: int) -> bool:
    """Usable on a phone: nothing wider than the viewport."""
    return page.evaluate("document.documentElement.scrollWidth") <= width


def multipart_fields(request) -> dict[str, bytes]:
    """The fields of a multipart request Chromium sent, by name (file fields: the file's bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + request.post_data_buffer)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.get_payload()
    }


@WIDTHS
def test_upload_shows_the_verdict(browser, web, registered_model, sample_images, tmp_path, width, height):
    (image,) = write_probes(sample_images, tmp_path, 1)
    expected = predictions(web, [image], explain="true")
    result = expected["results"][0]
    page = browser.new_page(viewport={"width": width, "height": height})
    failed: list[str] = []  # every resource the page asks for exists
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        page.goto(web.url)
        page.locator("#model-version").filter(has_text=registered_model.version).wait_for(timeout=15_000)
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        verdict = page.locator("#verdict")
        assert verdict.get_attribute("data-verdict") == result["verdict"]
        assert verdict.inner_text() == WORDS[result["verdict"]]
        shown = page.locator("#probability").inner_text()
        assert shown == shown_percent(result["fake_probability"])
        page.locator("#result .frame.loaded img").wait_for(timeout=TIMEOUT_MS)
        assert page.locator("#note").is_visible() == bool(result["note"])
        assert page.locator("#result button.wrong").count() >= 1
        assert page.locator("#tools a[href='/model']").is_visible()
        # The toggle is offered exactly when the predictor sent a heatmap.
        assert page.locator("#heatmap-switch").is_visible() == (result["heatmap"] is not None)
        assert page.locator("#batch").is_hidden()
        assert page.locator("#synthetic-notice").is_hidden()
        assert fits_the_viewport(page, width)
        screenshot(page, f"verdict-{width}")
        assert failed == []

        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        page.set_input_files("#file-input", str(text))
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=15_000)
        assert "notes.txt is not an image" in error.inner_text()
        assert page.locator("#result").is_hidden()
        screenshot(page, f"error-{width}")
    finally:
        page.close()


@WIDTHS
def test_batch_table_and_csv_download(browser, web, registered_model, sample_images, tmp_path, width, height):
    files = write_probes(sample_images, tmp_path, 6)
    expected = predictions(web, files)
    requests_sent = []
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("request", lambda r: requests_sent.append(r.url) if "/api/predictions" in r.url else None)
    try:
        page.goto(web.url)
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert len(requests_sent) == 1, "all files go in one request"
        rows = page.locator("#batch-table tbody tr")
        assert rows.count() == len(files)
        for i, result in enumerate(expected["results"]):
            row = rows.nth(i)
            assert row.get_attribute("data-verdict") == result["verdict"]
            assert row.locator("td[data-label='Verdict']").inner_text() == WORDS[result["verdict"]]
            probability = row.locator("td[data-label='Probability AI-generated']").inner_text()
            assert probability == shown_percent(result["fake_probability"])
            assert row.locator(".file-name").inner_text().startswith(files[i].name)
            assert row.locator("td[data-label='Note']").inner_text() == result["note"]
            assert row.locator("button.wrong").count() >= 1
        page.locator("#batch .frame.loaded").nth(len(files) - 1).wait_for(timeout=TIMEOUT_MS)
        assert page.locator("#result").is_hidden()
        assert fits_the_viewport(page, width)
        screenshot(page, f"batch-{width}")

        with page.expect_download() as download_info:
            page.click("#csv-download")
        download = download_info.value
        assert download.suggested_filename == "deepguard-results.csv"
        table = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
        assert table[0] == ["file", "verdict", "fake_probability", "label", "note", "model_version"]
        assert len(table) == len(files) + 1
        for line, result, path in zip(table[1:], expected["results"], files, strict=True):
            assert line[0] == path.name
            assert line[1] == result["verdict"]
            assert float(line[2]) == pytest.approx(result["fake_probability"], abs=1e-9)
            assert line[3] == result["label"]
            assert line[4] == result["note"]
            assert line[5] == registered_model.version
    finally:
        page.close()


def test_too_many_or_too_large_files_are_refused_in_the_page(browser, web, sample_images, tmp_path):
    """Checked before uploading: a visible message and no request (the server's 4xx is tested in test_web)."""
    many = []
    for i in range(33):
        path = tmp_path / f"many-{i:02d}.jpg"
        path.write_bytes(sample_images.probe[0])
        many.append(str(path))
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10))  # conftest's web: 2 MB per file
    sent = []
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.on("request", lambda r: sent.append(r.url) if "/api/predictions" in r.url else None)
    try:
        page.goto(web.url)
        error = page.locator("#error")
        page.set_input_files("#file-input", many)
        error.wait_for(state="visible", timeout=15_000)
        assert "33 files" in error.inner_text() and "up to 32" in error.inner_text()
        page.set_input_files("#file-input", [many[0], str(big)])
        page.locator("#error").filter(has_text="huge.jpg is larger than the limit of 2 MB").wait_for(
            timeout=15_000
        )
        assert sent == []
        screenshot(page, "refused-390")
    finally:
        page.close()


def heatmap_response(names: list[str], verdicts: list[str]) -> dict:
    """A /api/predictions answer with a heatmap hot in the top-left quarter for the first image only."""
    hot = [[1.0 if x < 16 and y < 16 else 0.0 for x in range(32)] for y in range(32)]
    return {
        "model_version": "7",
        "synthetic_data": False,
        "results": [
            {
                "file": name,
                "label": "FAKE" if verdict == "FAKE" else "REAL",
                "verdict": verdict,
                "fake_probability": 0.9 if verdict == "FAKE" else 0.5,
                "note": "Enlarged from a smaller image." if i == 0 else "",
                "input": {"width": 64, "height": 32, "format": "PNG"},
                "heatmap": hot if i == 0 else None,
            }
            for i, (name, verdict) in enumerate(zip(names, verdicts, strict=True))
        ],
    }


def fulfil_with(answer: dict):
    """A Playwright route handler answering 200 with ``answer`` as JSON."""

    def handler(route) -> None:
        route.fulfill(status=200, json=answer)

    return handler


def wide_png(path: Path) -> Path:
    """A 64x32 mid-grey PNG: not square, so an overlay that ignored the image's shape would show."""
    Image.new("RGB", (64, 32), (128, 128, 128)).save(path)
    return path


def test_heatmap_from_the_real_predictor(browser, web, predictor, sample_images, tmp_path):
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(sample_images.probe[0]).decode()],
            }
        ],
        "parameters": {"explain": True},
    }
    direct = requests.post(f"{predictor.url}/v2/models/deepguard/infer", json=body, timeout=60).json()
    assert "heatmap" in {output["name"] for output in direct.get("outputs", [])}, direct
    (image,) = write_probes(sample_images, tmp_path, 1)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.set_input_files("#file-input", str(image))
        page.locator("#heatmap-switch").wait_for(state="visible", timeout=TIMEOUT_MS)
        page.check("#heatmap-toggle")
        assert page.locator("#result canvas.heatmap").is_visible()
        screenshot(page, "heatmap-real-1280")
    finally:
        page.close()


@WIDTHS
def test_heatmap_toggle_draws_the_overlay_on_the_image(browser, web, tmp_path, width, height):
    """The page draws a heatmap answer (routed in: the predictor may not send heatmaps yet) over the image."""
    files = [wide_png(tmp_path / "wide.png"), wide_png(tmp_path / "second.png")]
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(web.url)
        for count in (1, 2):  # one image: the result card; two: the table
            answer = heatmap_response([path.name for path in files[:count]], ["FAKE", "UNCERTAIN"][:count])
            page.route("**/api/predictions", fulfil_with(answer))
            page.set_input_files("#file-input", [str(path) for path in files[:count]])
            scope = page.locator("#result" if count == 1 else "#batch")
            scope.wait_for(state="visible", timeout=TIMEOUT_MS)
            frame = scope.locator(".frame.loaded").first
            frame.wait_for(timeout=TIMEOUT_MS)
            switch = page.locator("#heatmap-switch")
            assert switch.is_visible()
            canvas = frame.locator("canvas.heatmap")
            assert canvas.is_hidden()
            plain = frame.screenshot()
            page.check("#heatmap-toggle")
            assert canvas.is_visible()
            # Scaled to the image: the overlay covers exactly the picture, whatever its shape.
            image_box = frame.locator("img").bounding_box()
            canvas_box = canvas.bounding_box()
            for key in ("x", "y", "width", "height"):
                assert canvas_box[key] == pytest.approx(image_box[key], abs=1), key
            assert image_box["width"] == pytest.approx(2 * image_box["height"], abs=1)
            overlaid = Image.open(io.BytesIO(frame.screenshot())).convert("RGB")
            w, h = overlaid.size
            hot = overlaid.getpixel((w // 8, h // 8))
            cold = overlaid.getpixel((7 * w // 8, 7 * h // 8))
            # Over mid-grey (128, 128, 128): clearly red where hot, a light blue tint where cold.
            assert hot[0] - hot[2] > 100, f"hot quarter should be red over grey: {hot}"
            assert cold[2] - cold[0] > 30, f"cold area should be tinted blue: {cold}"
            assert Image.open(io.BytesIO(plain)).convert("RGB").getpixel((w // 8, h // 8)) == (128, 128, 128)
            if count == 1:
                assert page.locator("#note").inner_text() == "Enlarged from a smaller image."
                assert page.locator("#input-facts").inner_text() == "Uploaded: 64\u00d732 PNG"
            else:
                # The second image has no heatmap: no overlay there; the table shows its "can't tell".
                assert page.locator("#batch .frame").nth(1).locator("canvas").count() == 0
                assert page.locator("#batch tbody tr").nth(1).get_attribute("data-verdict") == "UNCERTAIN"
                first = page.locator("#batch tbody tr").first
                assert first.locator("td[data-label='Note']").inner_text() == "Enlarged from a smaller image."
                assert first.locator(".file-name").inner_text() == "wide.png \u00b7 64\u00d732 PNG"
            screenshot(page, f"heatmap-{count}-{width}")
            page.uncheck("#heatmap-toggle")
            assert canvas.is_hidden()
            assert fits_the_viewport(page, width)
            page.unroute("**/api/predictions")
    finally:
        page.close()


def test_a_probability_near_certain_is_never_shown_as_certain(browser, web, tmp_path):
    """One decimal, but 0.99996 is not "100.0%" (nor 0.00004 "0.0%"): a calibrated score is never proof."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("sure", "real", "close")]
    answer = heatmap_response([path.name for path in files], ["FAKE", "REAL", "FAKE"])
    for result, probability in zip(answer["results"], (0.99996, 0.00004, 0.9994), strict=True):
        result["fake_probability"] = probability
        result["note"] = ""  # native images: a noted one's cell adds that it is a score only
    expected = ["> 99.9%", "< 0.1%", "99.9%"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        cells = page.locator("#batch td[data-label='Probability AI-generated']")
        assert cells.all_inner_texts() == expected
        single = {**answer, "results": answer["results"][:1]}
        page.unroute("**/api/predictions")
        page.route("**/api/predictions", fulfil_with(single))
        page.set_input_files("#file-input", str(files[0]))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.locator("#probability").inner_text() == expected[0]
        assert page.locator("#probability-meter").get_attribute("aria-valuetext") == expected[0]
    finally:
        page.close()


def test_a_screen_reader_hears_the_verdicts(browser, web, tmp_path):
    """The answer goes to the live region that was on the page when it came (a region shown only with its
    content is not announced), as a summary: the verdict, or a count of each in a batch."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("a", "b", "c")]
    answer = heatmap_response([path.name for path in files], ["FAKE", "UNCERTAIN", "FAKE"])
    answer["results"][0]["note"] = ""  # native: its probability is a calibrated one
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        status = page.locator("#status")
        assert status.get_attribute("role") == "status" and status.is_visible()
        page.route("**/api/predictions", fulfil_with({**answer, "results": answer["results"][:1]}))
        page.set_input_files("#file-input", str(files[0]))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert status.inner_text() == "Likely AI-generated: 90.0% probability it is AI-generated."
        page.unroute("**/api/predictions")
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert status.inner_text() == "3 images checked: 2 likely AI-generated, 1 can't tell."
        # The sections are filled while hidden; a live region there would only double what the status says.
        assert page.locator("#result[aria-live], #batch[aria-live]").count() == 0
    finally:
        page.close()


def test_an_error_naming_a_long_file_fits_a_phone(browser, web, tmp_path):
    """Phones name photos with long unbroken names; the message naming one must wrap, not widen the page."""
    name = tmp_path / "IMG_20261206_235959_HDR_portrait_burst_0000123456789_final.txt"
    name.write_text("not an image")
    page = browser.new_page(viewport={"width": 360, "height": 740})
    try:
        page.goto(web.url)
        page.set_input_files("#file-input", str(name))
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=15_000)
        assert name.name in error.inner_text()
        assert fits_the_viewport(page, 360)
    finally:
        page.close()


def test_dropping_something_that_is_no_file_keeps_the_results(browser, web, tmp_path):
    """Text or a link dragged onto the drop zone by mistake carries no file: the results stay as they were."""
    image = wide_png(tmp_path / "kept.png")
    answer = heatmap_response([image.name], ["FAKE"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        status = page.locator("#status").inner_text()
        page.evaluate(
            """() => {
            const transfer = new DataTransfer();
            transfer.setData("text/plain", "https://example.com/photo.jpg");
            const zone = document.getElementById("drop-zone");
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }"""
        )
        assert page.locator("#result").is_visible()
        assert page.locator("#verdict").inner_text() == "Likely AI-generated"
        assert page.locator("#tools").is_visible()
        assert page.locator("#status").inner_text() == status
    finally:
        page.close()


def test_each_feedback_button_names_its_file(browser, web, tmp_path):
    """32 buttons all called "This verdict is wrong" tell a screen reader user nothing (on a phone the table
    is no table): each button's accessible name keeps its visible words and adds the file it is about."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("first", "second")]
    answer = heatmap_response([path.name for path in files], ["FAKE", "UNCERTAIN"])
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        for name in ("This verdict is wrong: first.png", "It's a real photo: second.png"):
            assert page.get_by_role("button", name=name, exact=True).count() == 1, name
        assert page.get_by_role("button", name="This verdict is wrong", exact=True).count() == 0
    finally:
        page.close()


def test_no_heatmap_means_no_toggle(browser, web, tmp_path):
    image = wide_png(tmp_path / "plain.png")
    answer = heatmap_response([image.name], ["REAL"])
    answer["results"][0]["heatmap"] = None
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", lambda route: route.fulfill(status=200, json=answer))
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.locator("#heatmap-switch").is_hidden()
        assert page.locator("#result canvas").count() == 0
        assert page.locator("#verdict").inner_text() == "Likely a real photo"
    finally:
        page.close()


def test_feedback_button_sends_the_report_and_shows_the_outcome(
    browser, web, registered_model, sample_images, tmp_path
):
    """The real verdict from the real stack; /api/feedback (another module) is routed, to see what is sent."""
    (image,) = write_probes(sample_images, tmp_path, 1)
    result = predictions(web, [image])["results"][0]
    sent = []
    outcomes = iter(
        [
            {"status": 500, "body": json.dumps({"error": "feedback store is read-only"})},
            {"status": 201, "body": json.dumps({"id": "f-1"})},
        ]
    )

    def answer(route) -> None:
        sent.append(route.request)
        route.fulfill(content_type="application/json", **next(outcomes))

    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(web.url)
        page.route("**/api/feedback", answer)
        page.set_input_files("#file-input", str(image))
        page.locator("#result button.wrong").first.wait_for(timeout=TIMEOUT_MS)
        if result["verdict"] == "UNCERTAIN":  # the real model may not decide: the page asks which it is
            button = page.get_by_role("button", name="It's a real photo")
            claim = b"REAL"
        else:
            button = page.locator("#result button.wrong")
            assert button.inner_text() == "This verdict is wrong"
            claim = {"FAKE": b"REAL", "REAL": b"FAKE"}[result["verdict"]]
        outcome = page.locator("#result .feedback-outcome")

        button.click()
        page.locator("#result .feedback-outcome[data-state='failed']").wait_for(timeout=TIMEOUT_MS)
        assert outcome.inner_text() == "Not sent: feedback store is read-only"
        assert button.is_enabled(), "a failed report can be sent again"

        button.click()
        page.locator("#result .feedback-outcome[data-state='sent']").wait_for(timeout=TIMEOUT_MS)
        assert outcome.inner_text().startswith("Thanks, recorded")
        assert button.is_disabled()
        screenshot(page, "feedback-390")
    finally:
        page.close()
    assert len(sent) == 2
    request = sent[-1]
    assert request.method == "POST" and request.headers["content-type"].startswith("multipart/form-data")
    fields = multipart_fields(request)
    assert fields["image"] == image.read_bytes()
    assert fields["claimed_label"] == claim
    assert fields["verdict"].decode() == result["verdict"]
    assert float(fields["fake_probability"]) == pytest.approx(result["fake_probability"], abs=1e-12)
    assert fields["model_version"].decode() == registered_model.version


def test_uncertain_verdict_asks_which_it_is(browser, web, tmp_path):
    image = wide_png(tmp_path / "unsure.png")
    answer = heatmap_response([image.name], ["UNCERTAIN"])
    sent = []

    def feedback(route) -> None:
        sent.append(route.request)
        route.fulfill(status=201, json={"id": "f-2"})

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", lambda route: route.fulfill(status=200, json=answer))
        page.route("**/api/feedback", feedback)
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.locator("#verdict").inner_text() == "Can't tell"
        # The bar is in the verdict's colour, as for REAL and FAKE (not the links' blue).
        colour = "(element) => getComputedStyle(element).{}"
        bar = page.locator("#probability-bar").evaluate(colour.format("backgroundColor"))
        assert bar == page.locator("#verdict").evaluate(colour.format("color")) == "rgb(138, 97, 0)"
        buttons = page.locator("#result button.wrong")
        assert buttons.all_inner_texts() == ["It's a real photo", "It's AI-generated"]
        assert buttons.nth(1).get_attribute("title") == "Tell us: it's AI-generated"
        buttons.nth(1).click()
        page.locator("#result .feedback-outcome[data-state='sent']").wait_for(timeout=TIMEOUT_MS)
        outcome = page.locator("#result .feedback-outcome").inner_text()
        assert outcome == "Thanks, recorded: it's AI-generated."
    finally:
        page.close()
    fields = multipart_fields(sent[0])
    assert fields["claimed_label"] == b"FAKE" and fields["verdict"] == b"UNCERTAIN"
    assert fields["model_version"] == b"7"


@WIDTHS
def test_model_card_page(browser, web, predictor, width, height):
    metadata = requests.get(f"{predictor.url}/v2/models/deepguard", timeout=60).json()
    card = (metadata.get("parameters") or {}).get("model_card")
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(web.url)
        page.click("footer a[href='/model']")
        page.wait_for_url("**/model")
        if card is None:
            assert "has no model card" in page.locator("#no-card").inner_text()
        else:
            assert page.locator("#card-title").inner_text() == card["title"]
        assert page.locator("#serving-facts").is_visible()
        assert fits_the_viewport(page, width)
        screenshot(page, f"model-{width}")
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


def test_drag_and_drop_gives_the_verdicts(browser, web, sample_images):
    data = sample_images.probe[1:3]
    parts = [("image", (f"d{i}.jpg", d)) for i, d in enumerate(data)]
    expected = requests.post(f"{web.url}/api/predictions", files=parts, timeout=60).json()["results"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        # A real drop event on the drop zone, carrying the files, as a browser builds it for dragged files.
        page.evaluate(
            """(files) => {
            const transfer = new DataTransfer();
            files.forEach((bytes, i) => transfer.items.add(
                new File([new Uint8Array(bytes)], "dropped-" + i + ".jpg", {type: "image/jpeg"})));
            const zone = document.getElementById("drop-zone");
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
            [list(d) for d in data],
        )
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        verdicts = [
            page.locator("#batch tbody tr").nth(i).get_attribute("data-verdict") for i in range(len(data))
        ]
        assert verdicts == [result["verdict"] for result in expected]
    finally:
        page.close()


def test_synthetic_model_shows_a_loud_notice(browser, synthetic_web, sample_images, tmp_path):
    image = tmp_path / "probe.jpg"
    image.write_bytes(sample_images.probe[0])
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(synthetic_web)
        page.set_input_files("#file-input", str(image))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        notice = page.locator("#synthetic-notice")
        assert notice.is_visible()
        assert "synthetic" in notice.inner_text()
        screenshot(page, "synthetic-390")
    finally:
        page.close()


def test_an_out_of_domain_score_is_not_called_a_calibrated_probability(browser, web, tmp_path):
    """The probability is calibrated on images like the training ones. A noted image (a phone photo shrunk
    126x) showed "Calibrated probability it is AI-generated: 96.8%" beside "Can't tell", which a reader takes
    for an accusation: its score is labelled as a score, and the status line says the image is unlike them."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("photo", "native")]
    answer = heatmap_response([path.name for path in files], ["UNCERTAIN", "FAKE"])
    answer["results"][0]["fake_probability"] = 0.968
    answer["results"][1]["note"] = ""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(web.url)
        for result in answer["results"]:
            page.route("**/api/predictions", fulfil_with({**answer, "results": [result]}))
            page.set_input_files("#file-input", str(tmp_path / result["file"]))
            page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
            label = page.locator("#probability").locator("xpath=..").inner_text()
            status = page.locator("#status").inner_text()
            if result["note"]:
                assert "calibrated" not in label.lower() and "not a reliable probability" in label, label
                assert status == (
                    "Can't tell: the model's score for AI-generated is 96.8%, on an image unlike the ones it "
                    "learned from (see the note)."
                )
            else:
                assert label == "Calibrated probability it is AI-generated: 90.0%"
                assert status == "Likely AI-generated: 90.0% probability it is AI-generated."
            page.unroute("**/api/predictions")
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        cells = page.locator("#batch td[data-label='Probability AI-generated']")
        assert cells.nth(0).inner_text().split("\n") == ["96.8%", "score only: see the note"]
        assert cells.nth(1).inner_text() == "90.0%"
        assert fits_the_viewport(page, 390)
    finally:
        page.close()


def test_a_phone_photo_is_shown_upright_and_gets_no_verdict(browser, web, tmp_path):
    """A phone's portrait photo: 4032x3024 pixels stored sideways with EXIF orientation 6. The page shows it
    upright, says what was uploaded, and the real predictor gives no verdict at that size (it says why)."""
    y, x = np.mgrid[0:3024, 0:4032]
    pixels = np.stack([x * 255 // 4032, y * 255 // 3024, (x + y) * 255 // 7056], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    photo = tmp_path / "IMG_20261207_081500.jpg"
    Image.fromarray(pixels).save(photo, quality=85, exif=exif.tobytes())
    assert photo.stat().st_size < 2 * 1024 * 1024  # conftest's web: 2 MB per file
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(web.url)
        page.set_input_files("#file-input", str(photo))
        page.locator("#result .frame.loaded img").wait_for(timeout=TIMEOUT_MS)
        assert page.locator("#verdict").get_attribute("data-verdict") == "UNCERTAIN"
        assert page.locator("#input-facts").inner_text() == "Uploaded: 3024\u00d74032 JPEG"
        assert page.locator("#note").inner_text().endswith("At this size the model gives no verdict.")
        box = page.locator("#result .frame img").bounding_box()
        assert box["height"] > box["width"], "shown upright (portrait), as the phone took it"
        assert "calibrated" not in page.locator("#probability").locator("xpath=..").inner_text().lower()
        assert fits_the_viewport(page, 390)
        screenshot(page, "phone-photo-390")
    finally:
        page.close()


# WCAG 2 contrast of every visible text against the first opaque background behind it (4.5:1, or 3:1 for large
# text), and of every enabled button's outline (3:1: what shows it is a button).
CONTRAST_FAILURES = """() => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  }).reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (x, y) => {
    const [a, b] = [lum(x), lum(y)].sort((p, q) => q - p);
    return (a + 0.05) / (b + 0.05);
  };
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const failures = [];
  for (const el of document.querySelectorAll("body *")) {
    if (!el.getClientRects().length || el.closest("[hidden]") || el.disabled) continue;
    const style = getComputedStyle(el);
    const name = el.tagName + "." + el.className + " " + JSON.stringify(el.textContent.trim().slice(0, 30));
    if (el.tagName === "BUTTON" && !el.closest(".drop-zone")) {
      const edge = ratio(parse(style.borderTopColor).slice(0, 3), behind(el.parentElement));
      if (edge < 3) failures.push(name + " outline " + edge.toFixed(2));
    }
    const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.classList.contains("visually-hidden")) continue;
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const text = ratio(parse(style.color).slice(0, 3), behind(el));
    if (text < (large ? 3 : 4.5)) failures.push(name + " text " + text.toFixed(2));
  }
  return failures;
}"""


@WIDTHS
def test_every_text_and_button_has_enough_contrast(browser, web, tmp_path, width, height):
    """Green "Likely a real photo" (16 px bold in the table) and "Thanks, recorded" were 4.38:1 on white,
    under the 4.5:1 of WCAG AA; the feedback buttons' outline was 1.39:1. Checked with every verdict and
    outcome shown."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("real", "fake", "unsure")]
    answer = heatmap_response([path.name for path in files], ["REAL", "FAKE", "UNCERTAIN"])
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(web.url)
        page.route("**/api/feedback", lambda route: route.fulfill(status=201, json={"id": "f-3"}))
        for count in (1, 3):  # the result card, then the table
            page.route("**/api/predictions", fulfil_with({**answer, "results": answer["results"][:count]}))
            page.set_input_files("#file-input", [str(path) for path in files[:count]])
            page.locator("#result" if count == 1 else "#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
            page.locator("button.wrong:visible").first.click()
            page.locator(".feedback-outcome[data-state='sent']:visible").wait_for(timeout=TIMEOUT_MS)
            assert page.evaluate(CONTRAST_FAILURES) == []
            page.unroute("**/api/predictions")
        page.goto(f"{web.url}/model")
        assert page.evaluate(CONTRAST_FAILURES) == []
    finally:
        page.close()


def test_without_javascript_the_page_says_it_needs_it(browser, web):
    """With JavaScript off, picking a file did nothing and said nothing: the page says what is missing."""
    context = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto(web.url)
        notice = page.locator("#no-script")
        assert notice.is_visible()
        assert "needs JavaScript" in notice.inner_text()
        assert fits_the_viewport(page, 390)
    finally:
        context.close()


def test_headings_the_heatmaps_legend_and_what_the_model_can_judge(browser, web, tmp_path):
    """A screen reader user jumps by headings: the page had none but its title, so the verdict could not be
    reached that way. The heatmap's colours were explained nowhere: a legend in words comes with it. And the
    page promised to tell any image's origin: it says first what the model learned from and can judge."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("one", "two")]
    answer = heatmap_response([path.name for path in files], ["FAKE", "UNCERTAIN"])
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.goto(web.url)
        lead = page.locator("header .lead").inner_text()
        assert "tiny pictures (32\u00d732 pixels)" in lead and "phone photo" in lead, lead
        page.route("**/api/predictions", fulfil_with({**answer, "results": answer["results"][:1]}))
        page.set_input_files("#file-input", str(files[0]))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.get_by_role("heading", name="Verdict: Likely AI-generated", exact=True).is_visible()
        legend = page.locator("#heatmap-legend")
        assert legend.is_hidden()
        page.check("#heatmap-toggle")
        assert legend.is_visible() and "Red: where it found the most evidence" in legend.inner_text()
        name = "Heatmap for one.png: where the model found evidence that it is AI-generated"
        assert page.get_by_role("img", name=name).is_visible()
        page.uncheck("#heatmap-toggle")
        assert legend.is_hidden()
        page.unroute("**/api/predictions")
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.get_by_role("heading", name="Results", exact=True).count() == 1
        assert fits_the_viewport(page, 390)
    finally:
        page.close()


def test_a_cant_tell_heatmap_says_which_side_it_shows(browser, web, tmp_path):
    """The map shows the evidence for the image's label (the side of the threshold its score is on), but the
    legend said "evidence for its verdict", and a "Can't tell" verdict has no side: the page never said which
    side a map was about. The legend names it for one image, and each map is named by it in a batch."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("unsure", "photo")]
    answer = heatmap_response([path.name for path in files], ["UNCERTAIN", "REAL"])
    answer["results"][0]["label"] = "FAKE"  # "can't tell", its score on the FAKE side of the threshold
    answer["results"][1]["heatmap"] = answer["results"][0]["heatmap"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", fulfil_with({**answer, "results": answer["results"][:1]}))
        page.set_input_files("#file-input", str(files[0]))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        page.check("#heatmap-toggle")
        legend = page.locator("#heatmap-legend").inner_text()
        assert legend.startswith(
            "The map shows where the model found evidence that it is AI-generated, the side its score leans "
            "to (the verdict is \u201cCan't tell\u201d)."
        ), legend
        page.unroute("**/api/predictions")
        page.route("**/api/predictions", fulfil_with(answer))
        page.set_input_files("#file-input", [str(path) for path in files])
        page.locator("#batch").wait_for(state="visible", timeout=TIMEOUT_MS)
        page.check("#heatmap-toggle")
        assert "point at a map to see which" in page.locator("#heatmap-legend").inner_text()
        maps = page.locator("#batch canvas.heatmap")
        assert [maps.nth(i).get_attribute("title") for i in range(2)] == [
            "Heatmap for unsure.png: where the model found evidence that it is AI-generated",
            "Heatmap for photo.png: where the model found evidence that it is a real photo",
        ]
    finally:
        page.close()


def test_the_meter_is_named_as_the_score_is_labelled(browser, web, tmp_path):
    """The bar under the verdict is what a screen reader user meets on the way: it was named "Probability that
    the image is AI-generated" for every image, also for a noted one whose number the page calls "not a
    reliable probability". Its name is the label shown beside the number."""
    files = [wide_png(tmp_path / f"{name}.png") for name in ("photo", "native")]
    answer = heatmap_response([path.name for path in files], ["UNCERTAIN", "FAKE"])
    answer["results"][1]["note"] = ""
    page = browser.new_page(viewport={"width": 375, "height": 812})
    try:
        page.goto(web.url)
        for result, name in zip(
            answer["results"],
            (
                "The model's score for AI-generated (not a reliable probability for an image like this):",
                "Calibrated probability it is AI-generated:",
            ),
            strict=True,
        ):
            page.route("**/api/predictions", fulfil_with({**answer, "results": [result]}))
            page.set_input_files("#file-input", str(tmp_path / result["file"]))
            page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
            meter = page.get_by_role("meter")
            assert meter.get_attribute("aria-valuetext") == page.locator("#probability").inner_text()
            assert page.get_by_role("meter", name=name, exact=True).count() == 1, name
            page.unroute("**/api/predictions")
    finally:
        page.close()


def test_a_new_upload_cancels_the_one_still_on_its_way(browser, web, tmp_path):
    """On a slow connection a photo that takes a minute to upload kept uploading after the user picked another
    one, sharing the line with it, and its answer was thrown away: the new pick cancels it."""
    first, second = wide_png(tmp_path / "slow.png"), wide_png(tmp_path / "next.png")
    held = []
    failed = []

    def answer(route) -> None:
        if not held:
            held.append(route)  # the first upload is never answered: still on its way
        else:
            route.fulfill(status=200, json=heatmap_response([second.name], ["FAKE"]))

    page = browser.new_page(viewport={"width": 375, "height": 812})
    page.on("requestfailed", lambda r: failed.append(r) if "/api/predictions" in r.url else None)
    try:
        page.goto(web.url)
        page.route("**/api/predictions", answer)
        page.set_input_files("#file-input", str(first))
        page.wait_for_function("() => document.getElementById('status').textContent === 'Checking\u2026'")
        page.wait_for_timeout(200)
        assert len(held) == 1
        page.set_input_files("#file-input", str(second))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        page.wait_for_timeout(500)
        assert [request.url for request in failed] == [held[0].request.url], "the first upload is cancelled"
        assert page.locator("#error").is_hidden()
        assert page.locator("#verdict").inner_text() == "Likely AI-generated"
    finally:
        page.close()


def drop_paths(page, paths: list[str]) -> None:
    """Drag files (or folders) from the desktop onto the drop zone, as Chromium delivers a real drop."""
    box = page.locator("#drop-zone").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    session = page.context.new_cdp_session(page)
    data = {"items": [], "files": paths, "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        session.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
    session.detach()


def test_a_dropped_folder_is_named_not_blamed_on_the_network(browser, web, tmp_path):
    """A folder of photos dropped on the page arrives as one "file" that cannot be read: the upload failed and
    the page said "Could not reach the server; check your connection", sending the user to their network."""
    folder = tmp_path / "Holiday photos"
    folder.mkdir()
    wide_png(folder / "beach.png")
    page = browser.new_page(viewport={"width": 375, "height": 812})
    try:
        page.goto(web.url)
        drop_paths(page, [str(folder)])
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert error.inner_text() == (
            "Holiday photos could not be read: it is a folder, or a file moved or changed since it was "
            "chosen. Choose or drop the image files themselves."
        )
        assert "connection" not in error.inner_text()
        # The page stays usable: the image itself, dropped next, gets its verdict.
        drop_paths(page, [str(folder / "beach.png")])
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert error.is_hidden()
    finally:
        page.close()


def test_a_large_picture_is_shrunk_smoothly_and_a_small_one_enlarged_sharply(browser, web, tmp_path):
    """The preview kept CIFAKE's sharp pixels by drawing every picture with nearest-neighbour sampling, also a
    photo shrunk to fit: its fine detail came out as aliasing (1-pixel stripes shrunk 2.7x showed as black and
    white bands, not the grey they average to). Only an enlarged picture is drawn pixelated."""
    stripes = np.zeros((400, 600, 3), np.uint8)
    stripes[:, ::2] = 255
    large = tmp_path / "stripes.png"
    Image.fromarray(stripes).save(large)
    small = wide_png(tmp_path / "small.png")
    page = browser.new_page(viewport={"width": 375, "height": 812})
    try:
        page.goto(web.url)
        for path, rendering in ((large, "auto"), (small, "pixelated")):
            page.route("**/api/predictions", fulfil_with(heatmap_response([path.name], ["UNCERTAIN"])))
            page.set_input_files("#file-input", str(path))
            image = page.locator("#result .frame.loaded img")
            image.wait_for(timeout=TIMEOUT_MS)
            assert image.evaluate("(img) => getComputedStyle(img).imageRendering") == rendering, path.name
            if path == large:
                shown = np.asarray(Image.open(io.BytesIO(image.screenshot())).convert("L"), dtype=float)
                assert shown.std() < 40, f"aliased: grey levels spread {shown.std():.0f}"
            page.unroute("**/api/predictions")
    finally:
        page.close()


def test_a_pasted_screenshot_gets_its_verdict(browser, web, sample_images):
    """A screenshot is usually on the clipboard, not in a file (Print Screen, Win+Shift+S, Cmd+Ctrl+Shift+4):
    Ctrl+V on the page did nothing. A paste carrying images checks them; a paste of text does not."""
    png = io.BytesIO()
    Image.open(io.BytesIO(sample_images.probe[0])).save(png, "PNG")  # what a clipboard holds
    data = png.getvalue()
    expected = requests.post(f"{web.url}/api/predictions", files=[("image", ("x.png", data))], timeout=60)
    page = browser.new_page(viewport={"width": 375, "height": 812})
    try:
        page.goto(web.url)
        assert "paste" in page.locator("#drop-zone .drop-title").inner_text().lower()
        paste = """(items) => {
            const transfer = new DataTransfer();
            items.forEach(([text, bytes]) => text === null
                ? transfer.items.add(new File([new Uint8Array(bytes)], "image.png", {type: "image/png"}))
                : transfer.setData("text/plain", text));
            const init = {clipboardData: transfer, bubbles: true, cancelable: true};
            const event = new ClipboardEvent("paste", init);
            document.body.dispatchEvent(event);
            return event.defaultPrevented;
        }"""
        assert page.evaluate(paste, [[None, list(data)]]) is True
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        result = expected.json()["results"][0]
        assert page.locator("#verdict").get_attribute("data-verdict") == result["verdict"]
        assert page.locator("#result img").get_attribute("alt") == "Uploaded image image.png"
        # Text pasted (into nothing, or a search box of the browser's) leaves the result as it was.
        assert page.evaluate(paste, [["https://example.com/a.jpg", []]]) is False
        page.wait_for_timeout(300)
        assert page.locator("#result").is_visible()
    finally:
        page.close()


def test_the_file_picker_names_the_files_whose_verdicts_are_shown(browser, web, tmp_path):
    """The picker was emptied as soon as files were chosen (so that choosing them again checks again): beside
    the verdict it read "No file chosen", and a screen reader on it said so. It names the files checked and is
    emptied only when opened again; a drop or a paste, whose files it does not hold, empties it."""
    first, second = wide_png(tmp_path / "first.png"), wide_png(tmp_path / "second.png")
    sent = []

    def answer(route) -> None:
        sent.append(route.request.url)
        names = [first.name] if len(sent) != 2 else ["dropped.png"]
        route.fulfill(status=200, json=heatmap_response(names, ["FAKE"]))

    answered = "() => document.getElementById('status').textContent.startsWith('Likely')"
    chosen = "() => Array.from(document.getElementById('file-input').files, (file) => file.name)"
    page = browser.new_page(viewport={"width": 375, "height": 812})
    try:
        page.goto(web.url)
        page.route("**/api/predictions", answer)
        page.set_input_files("#file-input", str(first))
        page.locator("#result").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert page.evaluate(chosen) == ["first.png"]
        page.evaluate(
            """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            const zone = document.getElementById("drop-zone");
            const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
            list(second.read_bytes()),
        )
        page.wait_for_function(answered)
        assert page.evaluate(chosen) == []
        # Choosing the same file again is a new check.
        page.set_input_files("#file-input", str(first))
        page.wait_for_function(answered)
        with page.expect_file_chooser() as chooser:
            page.click("#file-input")
        assert page.evaluate(chosen) == []
        chooser.value.set_files(str(first))
        page.wait_for_function(answered)
        page.wait_for_timeout(300)
        assert len(sent) == 4
        assert page.evaluate(chosen) == ["first.png"]
    finally:
        page.close()
