"""A real Prometheus scrapes the real predictor and web app: our series exist, have their types and move."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from .monitoring_helpers import TIMEOUT, own_store
from .serving_helpers import free_port, running, start_predictor

PROMETHEUS = shutil.which("prometheus")
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: predictor
    static_configs: [{{targets: ["{predictor}"]}}]
  - job_name: web
    static_configs: [{{targets: ["{web}"]}}]
"""


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """The prometheus binary; absent in CI is a failure (.ci/run installs it), elsewhere a skip."""
    if PROMETHEUS is None:
        reason = "no prometheus binary on PATH (Debian: apt-get install -y prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return PROMETHEUS


@pytest.fixture(scope="module")
def stack(prometheus_binary, tiny_model, tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """Predictor, web app and a Prometheus scraping both every second; yields their URLs."""
    root = tmp_path_factory.mktemp("prometheus")
    store = own_store(tiny_model, root)
    manager, predictor = start_predictor(store, root / "predictor.log")
    with manager:
        web_port = free_port()
        web = f"http://127.0.0.1:{web_port}"
        web_env = {"PREDICTOR_URL": predictor, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(web_port)}
        with running([sys.executable, "-m", "flask_app"], f"{web}/livez", root / "web.log", web_env):
            config = root / "prometheus.yml"
            config.write_text(
                CONFIG.format(predictor=predictor.removeprefix("http://"), web=f"127.0.0.1:{web_port}")
            )
            port = free_port()
            command = [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            url = f"http://127.0.0.1:{port}"
            with running(command, f"{url}/-/ready", root / "prometheus.log", {}):
                yield predictor, web, url


def query(prometheus: str, expression: str) -> list[dict]:
    """Run an instant query; the result vector."""
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=TIMEOUT)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", body
    return body["data"]["result"]


def scalar(prometheus: str, expression: str) -> float:
    """The single value of ``sum(...)``-style query, 0 when there is no series."""
    result = query(prometheus, expression)
    return float(result[0]["value"][1]) if result else 0.0


def eventually(prometheus: str, expression: str, at_least: float, timeout_s: float = 30.0) -> float:
    """Wait for Prometheus to have scraped a value of at least ``at_least``."""
    deadline = time.monotonic() + timeout_s
    while (current := scalar(prometheus, expression)) < at_least:
        assert time.monotonic() < deadline, f"{expression} = {current}, expected >= {at_least}"
        time.sleep(0.5)
    return current


def test_prometheus_scrapes_our_series_and_sees_them_move(stack, sample_images):
    predictor, web, prometheus = stack
    eventually(prometheus, 'sum(up{job=~"predictor|web"})', 2)
    before = {
        "predictions": scalar(prometheus, "sum(deepguard_predictions_total)"),
        "web": scalar(prometheus, 'sum(deepguard_web_requests_total{endpoint="/api/predict",code="200"})'),
    }
    files = sample_images.probe[:6]
    for data in files:
        response = requests.post(f"{web}/api/predict", files={"image": ("x.jpg", data)}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
    eventually(prometheus, "sum(deepguard_predictions_total)", before["predictions"] + len(files))
    eventually(
        prometheus,
        'sum(deepguard_web_requests_total{endpoint="/api/predict",code="200"})',
        before["web"] + len(files),
    )
    # The web app calls the predictor's V2 endpoint: the latency histogram has those requests.
    eventually(prometheus, 'sum(deepguard_request_duration_seconds_count{protocol="v2"})', len(files))
    eventually(prometheus, "sum(deepguard_web_upload_bytes_count)", len(files))
    eventually(prometheus, "sum(deepguard_records_written_total)", len(files))
    assert query(prometheus, "deepguard_model_info")[0]["metric"]["version"] == "1"
    assert scalar(prometheus, "histogram_quantile(0.5, sum by (le) (deepguard_fake_probability_bucket))") > 0

    # Prometheus read the types we declared. It asks for OpenMetrics, where a counter's family drops "_total"
    # and an info metric is its own type; the classic text format names them as the series.
    response = requests.get(f"{prometheus}/api/v1/metadata", timeout=TIMEOUT)
    types = {name: entries[0]["type"] for name, entries in response.json()["data"].items()}

    def declared(name: str) -> str | None:
        return types.get(name) or types.get(name.removesuffix("_total"))

    assert declared("deepguard_predictions_total") == "counter"
    assert declared("deepguard_web_requests_total") == "counter"
    assert declared("deepguard_fake_probability") == "histogram"
    assert declared("deepguard_model_batch_images") == "histogram"
    assert (types.get("deepguard_model_info") or types.get("deepguard_model")) in ("gauge", "info")
