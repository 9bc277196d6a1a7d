"""A real Prometheus scrapes the real predictor and web app: our series exist, have their types and move."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from metric_catalog import declared_families, declared_samples
from prometheus_client.parser import text_string_to_metric_families

from core.names import DRIFT_LATEST

from .monitoring_helpers import TIMEOUT, own_store
from .serving_helpers import free_port, running, start_predictor

PROMETHEUS = shutil.which("prometheus")
# Each target gets the labels prometheus-operator gives a PodMonitor's or ServiceMonitor's targets (endpoint:
# the port's name; namespace, pod, container, service) and the PodMonitor's revision, as in a cluster.
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: predictor
    static_configs: [{{targets: ["{predictor}"]}}]
    relabel_configs:
      - {{target_label: endpoint, replacement: user-port}}
      - {{target_label: namespace, replacement: deepguard}}
      - {{target_label: pod, replacement: deepguard-predictor-00001-deployment-0}}
      - {{target_label: container, replacement: kserve-container}}
      - {{target_label: revision, replacement: deepguard-predictor-00001}}
  - job_name: web
    static_configs: [{{targets: ["{web}"]}}]
    relabel_configs:
      - {{target_label: endpoint, replacement: metrics}}
      - {{target_label: namespace, replacement: deepguard}}
      - {{target_label: service, replacement: deepguard-web}}
      - {{target_label: pod, replacement: deepguard-web-0}}
      - {{target_label: container, replacement: web}}
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
def stack(prometheus_binary, tiny_model, tmp_path_factory) -> Iterator[tuple[str, str, str, str]]:
    """Predictor, web app and a Prometheus scraping both every second (the web app on its metrics port, as
    the chart's ServiceMonitor does); yields the predictor's, the web app's, its metrics' and Prometheus's
    URLs."""
    root = tmp_path_factory.mktemp("prometheus")
    store = own_store(tiny_model, root)
    # The drift monitor's summary, where it writes it (the predictor's monitoring folder: start_predictor).
    (root / "monitoring").mkdir()
    summary = {"status": "ok", "drift": False, "psi": 0.05, "model_version": store.version}
    summary["ts"] = "2026-12-01T12:00:00+00:00"
    (root / "monitoring" / DRIFT_LATEST).write_text(json.dumps(summary))
    manager, predictor = start_predictor(store, root / "predictor.log")
    with manager:
        web_port, metrics_port = free_port(), free_port()
        web = f"http://127.0.0.1:{web_port}"
        web_env = {
            "PREDICTOR_URL": predictor,
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(web_port),
            "WEB_METRICS_PORT": str(metrics_port),
        }
        with running([sys.executable, "-m", "flask_app"], f"{web}/livez", root / "web.log", web_env):
            config = root / "prometheus.yml"
            config.write_text(
                CONFIG.format(predictor=predictor.removeprefix("http://"), web=f"127.0.0.1:{metrics_port}")
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
                yield predictor, web, f"http://127.0.0.1:{metrics_port}", url


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
    predictor, web, _, prometheus = stack
    eventually(prometheus, 'sum(up{job=~"predictor|web"})', 2)
    before = {
        "predictions": scalar(prometheus, "sum(deepguard_predictions_total)"),
        "web": scalar(prometheus, 'sum(deepguard_web_requests_total{route="/api/predict",code="200"})'),
    }
    files = sample_images.probe[:6]
    for data in files:
        response = requests.post(f"{web}/api/predict", files={"image": ("x.jpg", data)}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
    eventually(prometheus, "sum(deepguard_predictions_total)", before["predictions"] + len(files))
    eventually(
        prometheus,
        'sum(deepguard_web_requests_total{route="/api/predict",code="200"})',
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


def live_series(url: str) -> tuple[dict[str, str], dict[str, set[frozenset[str]]]]:
    """``GET <url>/metrics``: the type of each ``deepguard_*`` sample name, and the label-name sets it has."""
    response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    types: dict[str, str] = {}
    labels: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(response.text):
        if not family.name.startswith("deepguard_") or family.name.endswith("_created"):
            continue
        # A labelled family with no child yet shows only its TYPE line: note it under the exposed name.
        types.setdefault(family.name, family.type)
        for sample in family.samples:
            if sample.name.endswith("_created"):  # prometheus_client's creation times, not a series we query
                continue
            types[sample.name] = family.type
            labels.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return types, labels


def test_a_live_scrape_exports_exactly_the_declared_series_and_labels(stack, sample_images):
    """After real requests (accepted and refused), both servers export each declared series with exactly its
    declared labels, and nothing undeclared: tests/metric_catalog.py, which the alerts, the dashboard and the
    canary queries are checked against (tests/k8s/test_chart_monitoring.py), is what really comes out."""
    predictor, web, web_metrics, _ = stack
    assert requests.post(
        f"{web}/api/predict", files={"image": ("x.jpg", sample_images.probe[0])}, timeout=TIMEOUT
    ).ok
    # A cut-short JPEG: the web app takes it for one, the predictor refuses it (a decode error, a 4xx).
    cut = sample_images.probe[0][: len(sample_images.probe[0]) // 3]
    refused = requests.post(f"{web}/api/predict", files={"image": ("x.jpg", cut)}, timeout=TIMEOUT)
    assert 400 <= refused.status_code < 500, refused.text
    families = declared_families()
    samples = declared_samples(families)
    types, labels = live_series(predictor)
    web_types, web_labels = live_series(web_metrics)
    types |= web_types
    labels |= web_labels
    undeclared = {name for name in labels if name not in samples}
    assert undeclared == set(), "exported but not declared (nor documented): add them to the metrics module"
    wrong = {
        name: (sorted(map(sorted, found)), sorted(samples[name][1]))
        for name, found in labels.items()
        if found != {samples[name][1]}
    }
    assert wrong == {}, "sample: (labels exported, labels declared)"
    for name, family in families.items():
        exposed = {name, name.removesuffix("_total"), *family.samples()}
        assert exposed & set(types), f"{name} is not exported at all"
        for sample in set(family.samples()) & set(types):
            if family.type in ("counter", "histogram"):
                assert types[sample] == family.type, sample
