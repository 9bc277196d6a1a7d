"""The Flask app under gunicorn, over real HTTP, in front of the real predictor: uploads good and bad."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from PIL import Image

from core.labels import VERDICTS
from flask_app import DEFAULT_PREDICTOR_TIMEOUT_S, MAX_BATCH_FILES, SECURITY_HEADERS, create_app
from flask_app.predictor_client import parse_infer_response

from .serving_helpers import free_port, running, start_predictor

TIMEOUT = 60


def upload(web, data: bytes, filename: str = "image.jpg", field: str = "image") -> requests.Response:
    files = {field: (filename, data, "application/octet-stream")}
    return requests.post(f"{web.url}/api/predict", files=files, timeout=TIMEOUT)


def direct_v2(predictor, files: list[bytes], explain: bool = False) -> dict:
    """The predictor's own V2 answer for ``files``: what the web app must pass on."""
    body: dict = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(files)],
                "data": [base64.b64encode(data).decode() for data in files],
            }
        ]
    }
    if explain:
        body["parameters"] = {"explain": True}
    response = requests.post(f"{predictor.url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def require_output(outputs: dict, name: str) -> None:
    """The predictor sends every output the page shows: one it stopped sending fails here, never skips."""
    assert name in outputs, f"the predictor sent no V2 output {name!r}, only {sorted(outputs)}"


def upload_many(web, files: list[tuple[str, bytes]], **form: str) -> requests.Response:
    parts = [("image", (name, data, "application/octet-stream")) for name, data in files]
    return requests.post(f"{web.url}/api/predictions", files=parts, data=form, timeout=TIMEOUT)


def test_upload_gives_the_predictors_verdict(web, predictor, registered_model, sample_images):
    for data in sample_images.probe[:4]:
        response = upload(web, data)
        assert response.status_code == 200, response.text
        body = response.json()
        fields = {"label", "fake_probability", "model_version", "synthetic_data", "verdict", "note"}
        assert set(body) == fields
        assert body["model_version"] == registered_model.version
        assert body["synthetic_data"] is False
        direct = requests.post(
            f"{predictor.url}/v2/models/deepguard/infer",
            timeout=TIMEOUT,
            json={
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(data).decode()],
                    }
                ]
            },
        ).json()
        outputs = {o["name"]: o["data"][0] for o in direct["outputs"]}
        assert body["label"] == outputs["label"]
        assert body["fake_probability"] == pytest.approx(outputs["fake_probability"], abs=1e-7)
        assert (body["verdict"], body["note"]) == (outputs["verdict"], outputs["note"])


BAD_UPLOADS = [
    ("no file", "file", b"\xff\xd8\xff\xe0", 400, "no file"),
    ("empty file", "image", b"", 400, "empty"),
    ("text file", "image", b"%PDF-1.7 not an image at all", 415, "not an image"),
    ("truncated jpeg", "image", None, 422, "could not be read"),
    ("too large", "image", b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10), 413, "larger than"),
]


# Named ids: pytest spelled the 2 MB case's bytes into its id, and `-k` selections passed it on to a
# subprocess's arguments ("Argument list too long").
@pytest.mark.parametrize(
    ("name", "field", "data", "status", "words"), BAD_UPLOADS, ids=[case[0] for case in BAD_UPLOADS]
)
def test_bad_upload_gets_a_clear_4xx(web, sample_images, name, field, data, status, words):
    if data is None:
        data = sample_images.probe[0][:300]
    response = upload(web, data, field=field)
    assert response.status_code == status, (name, response.text)
    assert words in response.json()["error"].lower()
    assert upload(web, sample_images.probe[0]).status_code == 200


def test_the_one_image_route_refuses_two_files_and_says_when_the_field_holds_text(sample_images):
    """Two files: only the first was scored, and the answer did not say so. ``curl -F image=photo.jpg``
    (no ``@``) sends the name as text: the answer said no file was uploaded, in a field the request has."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"})  # never called: both are refused before it
    image = sample_images.probe[0]
    with app.test_client() as client:
        files = [(io.BytesIO(image), "a.jpg"), (io.BytesIO(image), "b.jpg")]
        two = client.post("/api/predict", data={"image": files})
        text = client.post("/api/predict", data={"image": "photo.jpg"})
        batch_text = client.post("/api/predictions", data={"image": "photo.jpg"})
    assert two.status_code == 400
    assert two.get_json()["error"].startswith("2 files were uploaded; this route scores one")
    assert "/api/predictions" in two.get_json()["error"]
    for response in (text, batch_text):
        assert response.status_code == 400
        assert "holds text, not a file" in response.get_json()["error"], response.get_json()
        assert "-F image=@photo.jpg" in response.get_json()["error"]


def test_a_refusal_names_the_file_and_a_compressed_body_is_refused_for_its_encoding(sample_images):
    """``/api/predict`` said "The file is ..." where the batch route names the file; a gzip multipart body
    parsed as no fields at all and was answered "No file was uploaded"."""
    import gzip

    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"})  # never called: each is refused before it
    pdf = b"%PDF-1.7 a scan, not a photo"
    envelope = "multipart/form-data; boundary=b"
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    body += sample_images.probe[0] + b"\r\n--b--\r\n"
    with app.test_client() as client:
        named = client.post("/api/predict", data={"image": (io.BytesIO(pdf), "IMG_0001.jpg")})
        routes = ("/api/predict", "/api/predictions", "/api/feedback")
        squeezed = [
            client.post(
                route,
                data=gzip.compress(body),
                headers={"Content-Type": envelope, "Content-Encoding": "gzip"},
            )
            for route in routes
        ]
    assert named.status_code == 415
    assert named.get_json()["error"].startswith("IMG_0001.jpg is a PDF document"), named.get_json()
    for route, response in zip(routes, squeezed, strict=True):
        assert response.status_code == 415, (route, response.get_json())
        assert response.get_json()["error"].startswith("Content-Encoding gzip is not supported"), route


class _StubPredictorHandler(BaseHTTPRequestHandler):
    """A stub predictor's V2 plumbing: read the request, answer outputs as JSON, log nothing."""

    def read_request(self) -> tuple[dict, int]:
        """The request's JSON: a binary-extension body's header (the web app sends the files after it)."""
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header = json.loads(body[: int(self.headers.get("Inference-Header-Content-Length", len(body)))])
        return header, header["inputs"][0]["shape"][0]

    def send_outputs(self, outputs: dict[str, tuple[str, list]], count: int) -> None:
        answer = {
            "model_version": "4",
            "outputs": [
                {"name": name, "datatype": kind, "shape": [count], "data": data}
                for name, (kind, data) in outputs.items()
            ],
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


class _UncertainHandler(_StubPredictorHandler):
    """A stub predictor answering UNCERTAIN with a domain note for every image."""

    def do_POST(self) -> None:
        _, count = self.read_request()
        outputs = {
            "fake_probability": ("FP32", [0.6] * count),
            "label": ("BYTES", ["FAKE"] * count),
            "verdict": ("BYTES", ["UNCERTAIN"] * count),
            "note": ("BYTES", ["Unlike the training images: resized."] * count),
        }
        self.send_outputs(outputs, count)


def test_the_one_image_route_answers_the_three_way_verdict_and_note_stub_predictor(sample_images):
    """Every answer carries the verdict (README): /api/predict gave only the binary label, which calls an
    image the bands cannot decide FAKE or REAL."""
    with ThreadingHTTPServer(("127.0.0.1", 0), _UncertainHandler) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        app = create_app({"PREDICTOR_URL": f"http://127.0.0.1:{stub.server_address[1]}"})
        response = app.test_client().post(
            "/api/predict", data={"image": (io.BytesIO(sample_images.probe[0]), "a.jpg")}
        )
        stub.shutdown()
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["label"], body["verdict"]) == ("FAKE", "UNCERTAIN")
    assert body["note"] == "Unlike the training images: resized."


def test_a_file_of_exactly_the_size_limit_is_scored_and_one_byte_more_is_refused(predictor, sample_images):
    limit = 100_000
    app = create_app({"PREDICTOR_URL": predictor.url, "MAX_CONTENT_LENGTH": limit})
    image = sample_images.probe[0]  # a JPEG: Pillow ignores what follows its end marker
    with app.test_client() as client:
        for size, status in ((limit, 200), (limit + 1, 413)):
            data = image + b"\0" * (size - len(image))
            response = client.post("/api/predict", data={"image": (io.BytesIO(data), "big.jpg")})
            assert response.status_code == status, (size, response.get_json())
    assert "larger than the limit" in response.get_json()["error"]


def test_a_model_name_the_predictor_does_not_serve_is_a_502_naming_the_setting(predictor, sample_images):
    app = create_app({"PREDICTOR_URL": predictor.url, "MODEL_NAME": "deepgaurd"})
    with app.test_client() as client:
        response = client.post("/api/predict", data={"image": (io.BytesIO(sample_images.probe[0]), "a.jpg")})
    assert response.status_code == 502
    assert "'deepgaurd'" in response.get_json()["error"] and "MODEL_NAME" in response.get_json()["error"]


def test_several_images_go_in_one_request_and_come_back_in_order(
    web, predictor, registered_model, sample_images
):
    files = [(f"probe-{i}.jpg", data) for i, data in enumerate(sample_images.probe[:6])]
    response = upload_many(web, files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == registered_model.version
    assert body["synthetic_data"] is False
    direct = direct_v2(predictor, [data for _, data in files])
    assert [r["file"] for r in body["results"]] == [name for name, _ in files]
    for i, result in enumerate(body["results"]):
        assert result["verdict"] in VERDICTS
        assert result["verdict"] == direct["verdict"][i]
        assert result["label"] == direct["label"][i]
        assert result["fake_probability"] == pytest.approx(direct["fake_probability"][i], abs=1e-7)
        assert isinstance(result["note"], str)
        assert result["heatmap"] is None, "no heatmap unless explain=true"


def test_explain_true_gives_a_32x32_heatmap_per_image(web, predictor, sample_images):
    require_output(direct_v2(predictor, sample_images.probe[:1], explain=True), "heatmap")
    files = [(f"p{i}.jpg", data) for i, data in enumerate(sample_images.probe[:3])]
    response = upload_many(web, files, explain="true")
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        heatmap = result["heatmap"]
        assert len(heatmap) == 32 and all(len(row) == 32 for row in heatmap)
        assert all(0.0 <= value <= 1.0 for row in heatmap for value in row)


def test_domain_notes_and_input_facts_are_passed_on(web, predictor, sample_images):
    outputs = direct_v2(predictor, sample_images.probe[:1])
    require_output(outputs, "note")
    response = upload_many(web, [("p.jpg", sample_images.probe[0])])
    result = response.json()["results"][0]
    assert result["note"] == outputs["note"][0]
    require_output(outputs, "input_size")
    assert result["input"] == {"width": 32, "height": 32, "format": "JPEG"}


@pytest.mark.parametrize(
    ("name", "build", "form", "status", "words"),
    [
        (
            "too many files",
            lambda ok: [(f"{i}.jpg", ok) for i in range(MAX_BATCH_FILES + 1)],
            {},
            413,
            "33 files",
        ),
        (
            "a text file",
            lambda ok: [("a.jpg", ok), ("notes.txt", b"%PDF-1.7 no")],
            {},
            415,
            "notes.txt is a pdf document, not an image",
        ),
        ("an empty file", lambda ok: [("a.jpg", ok), ("empty.png", b"")], {}, 400, "empty.png is empty"),
        (
            "an oversized file",
            lambda ok: [("a.jpg", ok), ("big.jpg", b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10))],
            {},
            413,
            "big.jpg is larger than the limit of 2 mb",
        ),
        (
            "a truncated jpeg",
            lambda ok: [("a.jpg", ok), ("b.jpg", ok), ("cut.jpg", ok[:300])],
            {},
            422,
            "cut.jpg could not be read",
        ),
        (
            "a bad explain value",
            lambda ok: [("a.jpg", ok)],
            {"explain": "maybe"},
            400,
            "explain must be true or false",
        ),
        ("no file", lambda ok: [], {}, 400, "no file"),
    ],
)
def test_bad_batch_gets_a_4xx_naming_the_problem(web, sample_images, name, build, form, status, words):
    response = upload_many(web, build(sample_images.probe[0]), **form)
    assert response.status_code == status, (name, response.text)
    assert words in response.json()["error"].lower(), response.json()


def test_an_image_over_the_predictors_pixel_limit_is_called_too_large_not_unreadable(web, sample_images):
    """A huge photo reads fine: the message says it is too large and what to do, not that it is broken."""
    huge = io.BytesIO()
    Image.new("RGB", (7000, 7000), (90, 90, 90)).save(huge, format="PNG")  # 49 M pixels; the limit is 40 M
    for response in (
        upload_many(web, [("a.jpg", sample_images.probe[0]), ("huge.png", huge.getvalue())]),
        upload(web, huge.getvalue(), filename="huge.png"),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert re.match(r"(huge\.png|The file) is too large: 7000x7000 pixels exceeds the", error), error
        assert "could not be read" not in error and error.endswith("send a smaller copy.")


def one_colour_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` pixels, all black: a few KB that decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    squeeze = zlib.compressobj(9)
    pixels = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_too_large_by_the_services_limit_not_pillows(web, sample_images):
    """Beyond 179 M pixels Pillow refuses while opening, before the predictor's own check: the page said
    "could not be read as an image: decompression bomb refused: ... exceeds limit of 178956970 pixels, could
    be decompression bomb DOS attack..", a limit the service does not have, for a panorama as for a bomb."""
    bomb = one_colour_png(30000, 30000)
    assert len(bomb) < 200_000, len(bomb)
    for response in (
        upload_many(web, [("a.jpg", sample_images.probe[0]), ("pano.png", bomb)]),
        upload(web, bomb, filename="pano.png"),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error == (
            "pano.png is too large: 900,000,000 pixels exceeds the limit of 40,000,000 pixels; "
            "send a smaller copy."
        ), error


def test_batch_over_the_total_byte_limit_is_a_413():
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "MAX_BATCH_BYTES": 4096})
    files = [(io.BytesIO(b"\xff\xd8\xff" + b"\0" * 3000), f"{i}.jpg") for i in range(2)]
    response = app.test_client().post("/api/predictions", data={"image": files})
    assert response.status_code == 413
    assert "together are larger than the limit" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "IMG_0001.HEIC",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            "IMG_0001.HEIC is a HEIC photo (the format iPhones save), which this service does not read",
        ),
        ("scan.jpg", b"%PDF-1.7\n1 0 obj", "scan.jpg is a PDF document, not an image"),
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "logo.svg is an SVG drawing"),
        ("notes.jpg", b"shopping list", "notes.jpg is not an image this service reads"),
    ],
    ids=["heic", "pdf", "svg", "text"],
)
def test_a_refused_file_is_named_by_what_it_is(name, data, message):
    """A PDF named .jpg was "not an image this service reads": its owner sees a .jpg and cannot tell why."""
    client = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"}).test_client()
    for route in ("/api/predict", "/api/predictions"):
        response = client.post(route, data={"image": [(io.BytesIO(data), name)]})
        assert response.status_code == 415, response.get_json()
        error = response.get_json()["error"]
        assert error.startswith(message), (route, error)  # both routes name the file
        assert error.endswith("upload a JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF file."), error


def test_the_upload_hint_states_the_configured_file_limit_and_promises_no_size_beyond_it():
    """The page once said "Any size works", but the predictor refuses an image over its pixel limit."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "MAX_CONTENT_LENGTH": 3 * 1024 * 1024})
    page = app.test_client().get("/").get_data(as_text=True)
    hint = " ".join(re.search(r'<span class="drop-hint">(.*?)</span>', page, re.DOTALL)[1].split())
    assert f"up to {MAX_BATCH_FILES} files of up to 3 MB each." in hint, hint
    assert "any size" not in hint.lower(), hint


@pytest.mark.parametrize(
    "form",
    [
        {f"field{i}": "x" for i in range(1500)},  # over Flask's MAX_FORM_PARTS (1,000)
        {"note": "x" * 600_000},  # a text field over MAX_FORM_MEMORY_SIZE (500,000 bytes)
    ],
    ids=["many parts", "long text field"],
)
@pytest.mark.parametrize("route", ["/api/predict", "/api/predictions", "/api/feedback"])
def test_a_form_of_too_many_parts_is_not_called_a_file_over_the_limit(route: str, form: dict) -> None:
    """Werkzeug's 413 for the form's shape was answered "The file is larger than the limit of 10 MB", for a
    request of well under 10 MB."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "FEEDBACK_DIR": "/nonexistent"})
    data = {**form, "image": (io.BytesIO(b"\xff\xd8\xff" + b"\0" * 100), "a.jpg")}
    response = app.test_client().post(route, data=data)
    assert response.status_code == 413, response.get_json()
    error = response.get_json()["error"]
    assert "larger than" not in error and "more than 1,000 parts or a text field over 500,000 bytes" in error


@pytest.mark.parametrize("route", ["/api/predict", "/api/predictions", "/api/feedback"])
def test_a_post_from_another_web_site_is_refused(route: str, tmp_path) -> None:
    """Any page could make its visitors' browsers post to the API (a multipart POST needs no CORS
    preflight): feedback from thousands of addresses, each under the per-client limit. Browsers name the
    requesting site; the page itself and scripts, which send no Origin, are served."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "FEEDBACK_DIR": str(tmp_path)})
    client = app.test_client()

    def post(**headers: str) -> Any:
        data = {"image": (io.BytesIO(b"\xff\xd8\xff" + b"\0" * 100), "a.jpg"), "claimed_label": "REAL"}
        return client.post(route, data=data, headers=headers)

    for headers in (
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},  # a browser without Fetch Metadata
        {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost"},  # a sibling subdomain
    ):
        refused = post(**headers)
        assert refused.status_code == 403, (headers, refused.get_json())
        assert "other web sites" in refused.get_json()["error"]
    assert not (tmp_path / "pending").exists(), "nothing of a refused report is stored"
    for headers in (
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "https://deepguard.example.com", "Sec-Fetch-Site": "same-origin"},  # a proxy rewrote Host
        {},  # a script
    ):
        served = post(**headers)  # past the check: refused later for the fake file or the dead predictor
        assert served.status_code != 403, (headers, served.get_json())


def test_files_of_exactly_the_total_byte_limit_are_not_refused():
    """The limit is on the files: the multipart envelope around them must not tip a batch over it."""
    limits = {"MAX_CONTENT_LENGTH": 4096, "MAX_BATCH_BYTES": 4096}
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", **limits})
    client = app.test_client()
    for size, status in ((2048, 503), (2049, 413)):  # 503: nothing listens on port 9, so it got that far
        files = [(io.BytesIO(b"\xff\xd8\xff" + b"\0" * (2048 - 3)), "a.jpg")]
        files.append((io.BytesIO(b"\xff\xd8\xff" + b"\0" * (size - 3)), "b.jpg"))
        response = client.post("/api/predictions", data={"image": files})
        assert response.status_code == status, (size, response.get_json())
    assert "together are larger than the limit of 0.00390625 MB" in response.get_json()["error"]


def test_parse_v2_response_with_every_optional_output():
    """The page's view of a V2 response that carries the note, input facts and heatmap outputs."""
    heatmap = [[(x + y) / 62 for x in range(32)] for y in range(32)]
    response = {
        "model_version": "7",
        "parameters": {"synthetic_data": False},
        "outputs": [
            {"name": "fake_probability", "datatype": "FP32", "shape": [2], "data": [0.9, 0.5]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["FAKE", "FAKE"]},
            {"name": "verdict", "datatype": "BYTES", "shape": [2], "data": ["FAKE", "UNCERTAIN"]},
            {"name": "note", "datatype": "BYTES", "shape": [2], "data": ["", "Enlarged from 16x16."]},
            {"name": "input_size", "datatype": "INT32", "shape": [2, 2], "data": [32, 32, 16, 16]},
            {"name": "input_format", "datatype": "BYTES", "shape": [2], "data": ["JPEG", "PNG"]},
            # Flat row-major, as KServe sends tensors; the second heatmap is the first one's complement.
            {
                "name": "heatmap",
                "datatype": "FP32",
                "shape": [2, 32, 32],
                "data": [v for row in heatmap for v in row] + [1 - v for row in heatmap for v in row],
            },
        ],
    }
    first, second = parse_infer_response(response, 2).items
    assert (first.verdict, second.verdict) == ("FAKE", "UNCERTAIN")
    assert (first.note, second.note) == ("", "Enlarged from 16x16.")
    assert (first.input_size, second.input_size) == ((32, 32), (16, 16))
    assert second.input_format == "PNG"
    assert first.heatmap[0][31] == pytest.approx(31 / 62, abs=1e-3)
    assert second.heatmap[31][31] == pytest.approx(0.0, abs=1e-3)
    bare = {"outputs": response["outputs"][:2], "model_version": "7"}
    item = parse_infer_response(bare, 2).items[1]
    assert (item.verdict, item.note, item.heatmap, item.input_size) == ("FAKE", "", None, None)
    with pytest.raises(ValueError):
        parse_infer_response(bare, 3)


def test_heatmaps_of_a_model_at_another_size_are_read_at_their_own_size() -> None:
    """data.image_size may be other than CIFAKE's 32, and the predictor's heatmaps are the model's size (V2
    shape [N, size, size]): the web app assumed 32x32 and turned every explained upload into an error."""
    side = 16
    values = [(i % side) / side for i in range(side * side)]
    response = {
        "model_version": "7",
        "outputs": [
            {"name": "fake_probability", "datatype": "FP32", "shape": [1], "data": [0.9]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["FAKE"]},
            {"name": "heatmap", "datatype": "FP32", "shape": [1, side, side], "data": values},
        ],
    }
    (item,) = parse_infer_response(response, 1).items
    assert len(item.heatmap) == side and {len(row) for row in item.heatmap} == {side}
    assert item.heatmap[3][5] == pytest.approx(5 / side, abs=1e-3)
    response["outputs"][2]["shape"] = [1, side * side]
    with pytest.raises(ValueError, match="heatmap shape"):
        parse_infer_response(response, 1)


def test_model_card_page_against_the_real_predictor(web, predictor, registered_model):
    page = requests.get(f"{web.url}/model", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    metadata = requests.get(f"{predictor.url}/v2/models/deepguard", timeout=TIMEOUT).json()
    card = (metadata.get("parameters") or {}).get("model_card")
    if card is None:
        assert "This model has no model card" in page.text
    else:
        assert card["title"] in page.text
    assert f"<dd>{registered_model.version}</dd>" in page.text
    for header, value in SECURITY_HEADERS.items():
        assert page.headers[header] == value


def test_model_page_says_a_band_the_predictor_sends_as_null_is_empty():
    """The predictor sends an empty band's edge as null: the page says the band is empty, and leaves out only
    what the predictor did not send."""
    from flask_app import model_facts

    facts = model_facts({"threshold": 0.41, "real_below": None, "fake_above": 0.87}, {})
    assert facts["REAL at or below"] == "none (empty band: decides nothing)"
    assert (facts["Decision threshold"], facts["FAKE at or above"]) == ("0.4100", "0.8700")
    assert "REAL at or below" not in model_facts({"threshold": 0.41}, {})


def test_model_page_writes_the_serving_numbers_as_the_card_does():
    """ "Serving now" showed "Decision threshold 0.3504358232021332" above the card's "decision threshold
    0.3504": the same number twice, once as noise. Numbers read to four places, as in the card."""
    from flask_app import model_facts

    facts = model_facts(
        {"threshold": 0.3504358232021332, "temperature": 0.19192034395716895}, {"versions": ["3"]}
    )
    assert (facts["Decision threshold"], facts["Calibration temperature"]) == ("0.3504", "0.1919")
    assert facts["Version"] == "3"
    assert model_facts({"threshold": 0.5, "synthetic_data": False}, {})["Trained on synthetic data"] == "no"
    # Four places, not four significant digits: a sample model's REAL edge 0.018021563 read "0.01802" above
    # the card's "0.0180", and its temperature 1.2356281 "1.236" above the card's "1.2356".
    from core.labels import band_edge_text
    from core.metrics import format_metric

    served = {"real_below": 0.018021563068032265, "temperature": 1.23562815846825}
    facts = model_facts(served, {})
    assert facts["REAL at or below"] == band_edge_text(served["real_below"]) == "0.0180"
    assert facts["Calibration temperature"] == format_metric(served["temperature"]) == "1.2356"


CARD = {
    "title": "DeepGuard <CNN> model card",
    "model_name": "deepguard",
    "version": "12",
    "sections": [
        {"heading": "Intended use", "text": "Screening CIFAKE-like 32x32 images."},
        {"heading": "Evaluation", "facts": {"accuracy": "0.91", "roc_auc": "0.97"}},
        {"heading": "Limitations", "list": ["Not proof.", "Degrades on JPEG q50."]},
    ],
}


def test_model_card_page_renders_every_kind_of_section():
    """The /model template with a card of the shared shape (text, facts, list), escaped."""
    from flask import render_template

    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"})
    with app.test_request_context("/model"):
        html = render_template("model.html", card=CARD, facts={"Version": "12"})
        empty = render_template("model.html", card=None, facts={})
    assert "DeepGuard &lt;CNN&gt; model card" in html and "<CNN>" not in html
    assert "<strong>deepguard</strong> version <strong>12</strong>" in html
    for heading in ("Intended use", "Evaluation", "Limitations"):
        assert f"<h2>{heading}</h2>" in html
    assert "<p>Screening CIFAKE-like 32x32 images.</p>" in html
    assert "<dt>roc_auc</dt><dd>0.97</dd>" in html
    assert "<li>Degrades on JPEG q50.</li>" in html
    assert "This model has no model card" not in html
    assert "This model has no model card" in empty


def test_pages_keep_the_csp_no_inline_script_or_style(web):
    pages = [requests.get(f"{web.url}{path}", timeout=TIMEOUT) for path in ("/", "/model")]
    down = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "PREDICTOR_TIMEOUT_S": 2}).test_client()
    texts = [page.text for page in pages] + [down.get("/model").get_data(as_text=True)]
    for text in texts:
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), "inline script"
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", text), "inline style or event handler"


def test_pages_name_an_icon_so_browsers_ask_for_no_favicon(web):
    """Without a declared icon, browsers request /favicon.ico, which the app answers 404 (a console error)."""
    assert requests.get(f"{web.url}/favicon.ico", timeout=TIMEOUT).status_code == 404
    for path in ("/", "/model"):
        page = requests.get(f"{web.url}{path}", timeout=TIMEOUT).text
        assert re.search(r'<link rel="icon" href="data:,">', page), path


def test_page_and_security_headers(web):
    page = requests.get(web.url, timeout=TIMEOUT)
    assert page.status_code == 200
    assert 'name="image"' in page.text and 'type="file"' in page.text and "multiple" in page.text
    assert 'href="/model"' in page.text
    assert 'name="viewport"' in page.text
    for header, value in SECURITY_HEADERS.items():
        assert page.headers[header] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = requests.get(f"{web.url}/static/app.js", timeout=TIMEOUT)
    assert script.status_code == 200 and "/api/predictions" in script.text and "/api/feedback" in script.text


def test_healthz_reports_the_predictor_and_version(web, registered_model):
    response = requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["predictor_ready"] is True
    assert response.json()["model_version"] == registered_model.version


def test_predictor_down_is_a_503_not_a_crash(sample_images):
    """The app with nothing listening at PREDICTOR_URL (port 9 on loopback: discard, normally closed). Its
    503s say when to try again (Retry-After), as the "busy" one does: a client's retry policy had nothing to
    go by."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "PREDICTOR_TIMEOUT_S": 2})
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["predictor_ready"] is False
    assert client.get("/livez").status_code == 200, "liveness must not depend on the predictor"
    response = client.post("/api/predict", data={"image": (io.BytesIO(sample_images.probe[0]), "a.jpg")})
    assert response.status_code == 503
    assert "not available" in response.get_json()["error"]
    assert response.headers["Retry-After"] == "5"
    files = [(io.BytesIO(data), f"{i}.jpg") for i, data in enumerate(sample_images.probe[:2])]
    response = client.post("/api/predictions", data={"image": files})
    assert response.status_code == 503
    assert "not available" in response.get_json()["error"]
    assert response.headers["Retry-After"] == "5"
    card = client.get("/model")
    assert card.status_code == 503 and card.content_type.startswith("text/html")
    assert card.headers["Retry-After"] == "5"
    assert "not available right now" in card.get_data(as_text=True)
    assert "Traceback" not in card.get_data(as_text=True)


def test_web_app_does_not_import_tensorflow():
    code = (
        "import sys, flask_app; flask_app.create_app(); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False False"


def test_livez_answers_within_a_second_while_the_predictor_hangs(sample_images, tmp_path):
    """The predictor is a bare listening socket: connections are accepted and never answered."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "PREDICTOR_URL": f"http://127.0.0.1:{hung.getsockname()[1]}",
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_WORKERS": "1",
            "WEB_THREADS": "4",
        }
        with (
            running([sys.executable, "-m", "flask_app"], f"{url}/livez", tmp_path / "web.log", env),
            ThreadPoolExecutor(8) as pool,
        ):
            started = time.perf_counter()
            web = SimpleNamespace(url=url)
            uploads = [pool.submit(upload, web, sample_images.probe[0]) for _ in range(8)]
            time.sleep(1.0)  # every upload that got a thread is now waiting on the predictor
            start = time.perf_counter()
            live = requests.get(f"{url}/livez", timeout=TIMEOUT)
            livez_s = time.perf_counter() - start
            statuses = sorted(future.result().status_code for future in uploads)
            uploads_s = time.perf_counter() - started
    assert live.status_code == 200
    assert livez_s < 1.0, f"/livez took {livez_s:.2f} s"
    # Three of the four threads waited for the predictor until the timeout (504); the rest were told at once
    # that the detector is busy (503), so a thread stayed free for /livez.
    assert statuses.count(504) == 3 and set(statuses) == {503, 504}, statuses
    assert uploads_s < DEFAULT_PREDICTOR_TIMEOUT_S + 3


class _ExplainFailsHandler(_StubPredictorHandler):
    """A stub predictor: a V2 answer for plain requests, ``explain_answer`` when asked to explain."""

    explain_answer: tuple[int, dict] = (500, {})

    def do_POST(self) -> None:
        body, count = self.read_request()
        if (body.get("parameters") or {}).get("explain"):
            status, error = self.explain_answer
            data = json.dumps(error).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_outputs(
            {"fake_probability": ("FP32", [0.75] * count), "label": ("BYTES", ["FAKE"] * count)}, count
        )


@pytest.mark.parametrize(
    "explain_answer",
    [(500, {}), (400, {"error": "model version 3 has no convolutional stage to explain"})],
    ids=["fails to explain", "cannot explain"],
)
def test_failed_explanation_still_gives_the_verdicts_stub_predictor(sample_images, explain_answer):
    """A predictor that fails or refuses only when explaining (a stub: every model of ours can explain)."""
    handler = type("Handler", (_ExplainFailsHandler,), {"explain_answer": explain_answer})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        app = create_app({"PREDICTOR_URL": f"http://127.0.0.1:{stub.server_address[1]}"})
        files = [(io.BytesIO(data), f"{i}.jpg") for i, data in enumerate(sample_images.probe[:3])]
        response = app.test_client().post("/api/predictions", data={"image": files, "explain": "true"})
        stub.shutdown()
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert [r["verdict"] for r in results] == ["FAKE"] * 3
    assert all(r["heatmap"] is None for r in results)


@pytest.fixture(scope="module")
def small_budget_predictor(registered_model, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The real predictor taking at most two 32x32 images' pixels per request."""
    log_file = tmp_path_factory.mktemp("small-budget") / "predictor.log"
    manager, url = start_predictor(registered_model, log_file, "--max-request-pixels", str(2 * 32 * 32))
    with manager:
        yield SimpleNamespace(url=url)


def test_batch_over_the_predictors_pixels_per_request_is_scored_in_calls_it_takes(
    small_budget_predictor, predictor, sample_images
):
    files = [(f"probe-{i}.jpg", data) for i, data in enumerate(sample_images.probe[:5])]
    assert (
        requests.post(  # the predictor refuses the batch as one request
            f"{small_budget_predictor.url}/v2/models/deepguard/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [5],
                        "data": [base64.b64encode(data).decode() for _, data in files],
                    }
                ]
            },
            timeout=TIMEOUT,
        ).status_code
        == 400
    )
    app = create_app({"PREDICTOR_URL": small_budget_predictor.url})

    def post(batch: list[tuple[str, bytes]], explain: str) -> Any:
        parts = [(io.BytesIO(data), name) for name, data in batch]
        return app.test_client().post("/api/predictions", data={"image": parts, "explain": explain})

    response = post(files, "true")
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    direct = direct_v2(predictor, [data for _, data in files])
    assert [r["file"] for r in results] == [name for name, _ in files]
    assert [r["fake_probability"] for r in results] == pytest.approx(direct["fake_probability"], abs=1e-6)
    assert all(r["heatmap"] is not None for r in results), "each call kept explain=true"
    # A file the predictor cannot read is still named when it sits in a later call.
    cut = files[:3] + [("cut.jpg", files[3][1][:300])] + files[4:]
    response = post(cut, "false")
    assert response.status_code == 422
    assert response.get_json()["error"].startswith("cut.jpg could not be read"), response.get_json()


def test_healthz_logs_once_when_the_predictor_becomes_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    """While the predictor is down /healthz answers 503 to a checker (helm test, an uptime probe) whose answer
    (why) the pod's log does not show, so the web app's log must say it, once, not at every check."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9"})  # nothing listens on port 9: unreachable
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_app"):
        for _ in range(3):
            assert client.get("/healthz").status_code == 503
    said = [r.getMessage() for r in caplog.records if "predictor" in r.getMessage()]
    assert len(said) == 1, said
    assert "not ready" in said[0] and "unreachable (ConnectionError)" in said[0] and "127.0.0.1:9" in said[0]


def test_the_web_apps_own_log_lines_reach_the_pod_log_with_time_and_level() -> None:
    """Nothing configured logging for the app under gunicorn: Python's last-resort handler printed its
    warnings bare (no time, no level, no logger) and dropped every INFO line ("predictor ready again")."""
    script = (
        "import logging; from flask_app import gunicorn_conf; gunicorn_conf.on_starting(None);"
        "log = logging.getLogger('flask_app'); log.info('predictor ready again');"
        "log.warning('predictor down')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR")}
    stderr = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stderr
    stamp = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] "
    assert re.search(stamp + r"\[INFO\] flask_app: predictor ready again$", stderr, re.MULTILINE), stderr
    assert re.search(stamp + r"\[WARNING\] flask_app: predictor down$", stderr, re.MULTILINE), stderr


def test_the_web_apps_defaults_are_the_names_every_layer_agrees_on() -> None:
    """The web app wrote its own copies of core/names.py's facts (predictor port 8080, served model name,
    monitoring folder, web port 5000, the variables' names): a change there left the web app asking the old
    port or model. With core.names changed before the app is imported, the app follows it."""
    script = (
        "import json, core.names as n;"
        "n.PREDICTOR_PORT, n.WEB_PORT, n.MONITORING_DIR = 18291, 18292, 'records';"
        "n.SERVED_MODEL_NAME = 'renamed';"
        "n.MODEL_NAME_ENV = 'RENAMED_MODEL_NAME';"
        "from flask_app import create_app, gunicorn_conf; c = create_app().config;"
        "print(json.dumps([c['PREDICTOR_URL'], c['MODEL_NAME'], c['FEEDBACK_DIR'], gunicorn_conf.bind]))"
    )
    drop = {"PREDICTOR_URL", "MODEL_NAME", "RENAMED_MODEL_NAME", "WEB_PORT", "WEB_HOST"}
    drop |= {"DEEPGUARD_MONITORING_DIR", "PROMETHEUS_MULTIPROC_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stdout
    assert json.loads(out) == ["http://127.0.0.1:18291", "renamed", "records/feedback", "127.0.0.1:18292"]
    env["RENAMED_MODEL_NAME"] = "asked-for"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=60
    ).stdout
    assert json.loads(out)[1] == "asked-for"
