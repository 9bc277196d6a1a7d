"""The Flask app under gunicorn, over real HTTP, in front of the real predictor: uploads good and bad."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests

from flask_app import DEFAULT_PREDICTOR_TIMEOUT_S, SECURITY_HEADERS, create_app

from .serving_helpers import free_port, running

TIMEOUT = 60


def upload(web, data: bytes, filename: str = "image.jpg", field: str = "image") -> requests.Response:
    files = {field: (filename, data, "application/octet-stream")}
    return requests.post(f"{web.url}/api/predict", files=files, timeout=TIMEOUT)


def test_upload_gives_the_predictors_verdict(web, predictor, registered_model, sample_images):
    for data in sample_images.probe[:4]:
        response = upload(web, data)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "fake_probability", "model_version", "synthetic_data"}
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


@pytest.mark.parametrize(
    ("name", "field", "data", "status", "words"),
    [
        ("no file", "file", b"\xff\xd8\xff\xe0", 400, "no file"),
        ("empty file", "image", b"", 400, "empty"),
        ("text file", "image", b"%PDF-1.7 not an image at all", 415, "not an image"),
        ("truncated jpeg", "image", None, 422, "could not be read"),
        ("too large", "image", b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10), 413, "larger than"),
    ],
)
def test_bad_upload_gets_a_clear_4xx(web, sample_images, name, field, data, status, words):
    if data is None:
        data = sample_images.probe[0][:300]
    response = upload(web, data, field=field)
    assert response.status_code == status, (name, response.text)
    assert words in response.json()["error"].lower()
    assert upload(web, sample_images.probe[0]).status_code == 200


def test_page_and_security_headers(web):
    page = requests.get(web.url, timeout=TIMEOUT)
    assert page.status_code == 200
    assert 'name="image"' in page.text and 'type="file"' in page.text
    assert 'name="viewport"' in page.text
    for header, value in SECURITY_HEADERS.items():
        assert page.headers[header] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = requests.get(f"{web.url}/static/app.js", timeout=TIMEOUT)
    assert script.status_code == 200 and "/api/predict" in script.text


def test_healthz_reports_the_predictor_and_version(web, registered_model):
    response = requests.get(f"{web.url}/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["predictor_ready"] is True
    assert response.json()["model_version"] == registered_model.version


def test_predictor_down_is_a_503_not_a_crash(sample_images):
    """The app with nothing listening at PREDICTOR_URL (port 9 on loopback: discard, normally closed)."""
    app = create_app({"PREDICTOR_URL": "http://127.0.0.1:9", "PREDICTOR_TIMEOUT_S": 2})
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["predictor_ready"] is False
    assert client.get("/livez").status_code == 200, "liveness must not depend on the predictor"
    response = client.post("/api/predict", data={"image": (io.BytesIO(sample_images.probe[0]), "a.jpg")})
    assert response.status_code == 503
    assert "not available" in response.get_json()["error"]


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
