"""Prometheus metrics and monitoring records of the real predictor and web app; the record writer."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image

from core.imagestats import STAT_NAMES, image_statistics
from core.imaging import InputFacts
from flask_app import metrics as web_metrics
from flask_app import web_threads
from serving import metrics
from serving.records import RecordWriter

from .monitoring_helpers import TIMEOUT, moved, own_store, read_records, scrape, value
from .serving_helpers import free_port, running, start_predictor

RECORD_KEYS = {
    "ts",
    "model_version",
    "protocol",
    "fake_probability",
    "verdict",
    "width",
    "height",
    "format",
    *STAT_NAMES,
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(url: str, files: list[bytes]) -> requests.Response:
    body = {"instances": [{"image": {"b64": b64(f)}} for f in files]}
    return requests.post(f"{url}/v1/models/deepguard:predict", json=body, timeout=TIMEOUT)


def v2(url: str, files: list[bytes]) -> requests.Response:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": [b64(f) for f in files]}
    return requests.post(f"{url}/v2/models/deepguard/infer", json={"inputs": [tensor]}, timeout=TIMEOUT)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    return own_store(tiny_model, tmp_path_factory.mktemp("mlflow-metrics"))


@pytest.fixture(scope="module")
def monitored(store, tmp_path_factory):
    """A predictor writing records to a folder of this module's."""
    root = tmp_path_factory.mktemp("monitored")
    manager, url = start_predictor(store, root / "predictor.log", "--monitoring-dir", str(root / "mon"))
    with manager:
        yield url, root / "mon"


# ---- the predictor's /metrics ---------------------------------------------------------------------
def test_predictions_inputs_batches_and_latency_move(monitored, store, sample_images):
    url, _ = monitored
    before = scrape(url)
    files = sample_images.probe[:3]
    answer_v1 = v1(url, files)
    answer_v2 = v2(url, [png(64, 48)])
    assert answer_v1.status_code == answer_v2.status_code == 200, answer_v1.text + answer_v2.text
    after = scrape(url)

    verdicts = [p["verdict"] for p in answer_v1.json()["predictions"]]
    verdicts += answer_v2.json()["outputs"][2]["data"]
    for verdict in set(verdicts):
        assert moved(before, after, "deepguard_predictions_total", verdict=verdict) == verdicts.count(verdict)
    assert moved(before, after, "deepguard_fake_probability_count") == len(verdicts)
    assert moved(before, after, "deepguard_inputs_total", format="JPEG") == len(files)
    assert moved(before, after, "deepguard_inputs_total", format="PNG") == 1
    # The 64x48 PNG lands above the 32x32 bucket, the native CIFAKE files in it.
    small = moved(before, after, "deepguard_input_pixels_bucket", le="1024.0")
    assert small == len(files)
    assert moved(before, after, "deepguard_model_batch_images_sum") == len(verdicts)
    for protocol in ("v1", "v2"):
        assert moved(before, after, "deepguard_request_duration_seconds_count", protocol=protocol) == 1
        assert moved(before, after, "deepguard_requests_total", protocol=protocol, code="200") == 1
        assert value(after, "deepguard_request_size_bytes_count", protocol=protocol) > 0
    info = [labels for name, labels in after if name == "deepguard_model_info"]
    assert info == [frozenset({("version", store.version), ("architecture", "TinyTestCNN")})]
    # KServe's own series are still in the same registry.
    assert any(name.startswith("request_predict_seconds") for name, _ in after)


@pytest.mark.parametrize(
    ("reason", "item"),
    [
        ("base64", "not base64!"),
        ("not_an_image", b64(b"%PDF-1.4 not an image")),
        ("corrupt", None),  # a truncated JPEG, built from a real file below
        ("empty", ""),
    ],
)
def test_decode_errors_are_counted_by_reason(monitored, sample_images, reason, item):
    url, _ = monitored
    if item is None:
        item = b64(sample_images.probe[0][:200])
    before = scrape(url)
    body = {"instances": [{"image": {"b64": item}}]}
    response = requests.post(f"{url}/v1/models/deepguard:predict", json=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    after = scrape(url)
    for other in metrics.DECODE_REASONS:
        grew = moved(before, after, "deepguard_decode_errors_total", reason=other)
        assert grew == (1 if other == reason else 0), (other, response.text)
    assert value(after, "deepguard_requests_total", protocol="v1", code="400") > 0


def test_a_refused_request_is_counted_with_its_status(monitored):
    url, _ = monitored
    before = scrape(url)
    response = requests.post(f"{url}/v2/models/deepguard/infer", data=b"not json", timeout=TIMEOUT)
    assert response.status_code == 400
    after = scrape(url)
    assert moved(before, after, "deepguard_requests_total", protocol="v2", code="400") == 1


def test_decode_error_reasons_match_the_messages_raised():
    assert metrics.decode_error_reason("x: too large: 9x9 pixels exceeds the limit ...") == "too_many_pixels"
    assert metrics.decode_error_reason("x: decompression bomb refused: 9x9 pixels exceeds ...") == (
        "too_many_pixels"
    )
    assert metrics.decode_error_reason("x: 11 bytes exceeds the limit of 10 bytes") == "too_large"
    assert metrics.decode_error_reason("instances: 600 images exceeds the limit of 512") == "too_many_images"
    assert metrics.decode_error_reason("something new") == "malformed"


# ---- monitoring records ---------------------------------------------------------------------------
def test_every_served_image_gets_a_record(monitored, store, sample_images):
    url, folder = monitored
    already = len(read_records(folder))
    answer = v2(url, [*sample_images.probe[:2], png(100, 80)])
    assert answer.status_code == 200, answer.text
    wait_for(lambda: len(read_records(folder)) >= already + 3, "three records")
    records = read_records(folder)[-3:]
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    for record, probability, verdict in zip(
        records, outputs["fake_probability"], outputs["verdict"], strict=True
    ):
        assert set(record) == RECORD_KEYS
        assert record["model_version"] == store.version
        assert record["protocol"] == "v2"
        assert record["verdict"] == verdict
        assert record["fake_probability"] == pytest.approx(probability, abs=1e-6)
    assert [(r["width"], r["height"], r["format"]) for r in records] == [
        (32, 32, "JPEG"),
        (32, 32, "JPEG"),
        (100, 80, "PNG"),
    ]
    # The flat PNG has one colour: no spread, no high frequencies.
    assert records[2]["mean_b"] == pytest.approx(200 / 255, abs=0.01)
    assert records[2]["std_r"] == pytest.approx(0.0, abs=1e-6)
    assert records[0]["hf_energy"] > records[2]["hf_energy"]
    assert not list((folder / "records").glob("*.png")), "images are never stored"
    assert value(scrape(url), "deepguard_records_written_total") >= already + 3


def test_unwritable_store_never_fails_a_request(store, sample_images, tmp_path):
    # records/ is a file, so nothing can be created in it, even by root (who ignores permission bits).
    (tmp_path / "mon").mkdir()
    (tmp_path / "mon" / "records").write_text("not a folder")
    os.chmod(tmp_path / "mon", 0o555)
    log_file = tmp_path / "predictor.log"
    manager, url = start_predictor(store, log_file, "--monitoring-dir", str(tmp_path / "mon"))
    with manager:
        for _ in range(3):
            response = v1(url, sample_images.probe[:2])
            assert response.status_code == 200, response.text
        wait_for(
            lambda: value(scrape(url), "deepguard_records_dropped_total", reason="write_error") == 6,
            "6 records counted as not written",
        )
        assert value(scrape(url), "deepguard_records_written_total") == 0
    log = (tmp_path / "predictor.log").read_text()
    assert "monitoring records not written" in log
    assert log.count("monitoring records not written") == 1, "the warning is rate-limited"


def test_no_monitoring_writes_no_records_and_a_413_is_counted(store, sample_images, tmp_path):
    manager, url = start_predictor(
        store,
        tmp_path / "predictor.log",
        "--monitoring-dir",
        str(tmp_path / "mon"),
        "--no-monitoring",
        "--max-request-bytes",
        "100000",
    )
    with manager:
        assert v1(url, sample_images.probe[:2]).status_code == 200
        noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "PNG")  # noise does not compress: 120 KB
        assert v1(url, [buffer.getvalue()]).status_code == 413
        after = scrape(url)
        assert value(after, "deepguard_requests_total", protocol="v1", code="413") == 1
        assert value(after, "deepguard_requests_total", protocol="v1", code="200") == 1
        assert value(after, "deepguard_records_written_total") == 0
    assert not (tmp_path / "mon").exists()


def test_sigterm_under_load_loses_no_record(store, sample_images, tmp_path):
    """Clients keep sending while the predictor gets SIGTERM: every image answered has its record."""
    folder = tmp_path / "mon"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model-uri",
        f"models:/{store.model_name}@champion",
        "--http_port",
        str(port),
        "--monitoring-dir",
        str(folder),
    ]
    env = {"MLFLOW_TRACKING_URI": store.tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    url = f"http://127.0.0.1:{port}"
    answered: list[int] = []
    stop = threading.Event()

    def client(files: list[bytes]) -> None:
        while not stop.is_set():
            try:
                response = v1(url, files)
            except requests.RequestException:
                return  # the server has closed its socket
            if response.status_code == 200:
                answered.append(len(response.json()["predictions"]))

    with running(command, f"{url}/v2/models/deepguard/ready", tmp_path / "predictor.log", env) as process:
        threads = [
            threading.Thread(target=client, args=(sample_images.probe[: 1 + i * 5],)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: sum(answered) >= 200, "200 images answered", timeout_s=120)
        process.send_signal(signal.SIGTERM)
        stop.set()  # requests in flight now still finish; new ones would only keep connections open
        assert process.wait(timeout=60) == 0, (tmp_path / "predictor.log").read_text()[-3000:]
        for thread in threads:
            thread.join(timeout=60)
    assert sum(answered) >= 200
    assert len(read_records(folder)) == sum(answered)


# ---- the record writer on its own -----------------------------------------------------------------
def _submit(writer: RecordWriter, count: int, version: str = "7") -> bool:
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    facts = [InputFacts(32, 32, "JPEG", "RGB", False, False)] * count
    return writer.submit(
        version, "v1", np.full(count, 0.25), ["REAL"] * count, facts, image_statistics(images)
    )


def test_files_rotate_by_size_and_the_oldest_are_deleted(tmp_path):
    writer = RecordWriter(tmp_path, max_file_bytes=2_000, max_total_bytes=6_000, flush_interval_s=0)
    for _ in range(40):
        assert _submit(writer, 2)
        wait_for(lambda: writer._queued == 0, "the writer to catch up")
    writer.close()
    files = sorted((tmp_path / "records").glob("*.jsonl"))
    assert len(files) > 1, "rotated by size"
    assert all(path.stat().st_size <= 2_000 for path in files)
    assert sum(path.stat().st_size for path in files) <= 6_000 + 2_000
    assert len(read_records(tmp_path)) < 80, "the oldest files were deleted"
    sequences = [int(path.stem.rsplit("-", 1)[1]) for path in files]
    assert sequences == sorted(sequences) and sequences[-1] >= len(files) - 1
    # The newest are kept (the drift monitor reads the last hours): deleting newest-first passed the above.
    assert sequences == list(range(sequences[-1] - len(files) + 1, sequences[-1] + 1)) and sequences[0] > 0


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path, caplog):
    writer = RecordWriter(tmp_path, max_queued_images=4)
    before = metrics.RECORDS_DROPPED.labels("queue_full")._value.get()
    # Holding the writer's lock keeps its thread from taking anything, so the queue fills.
    with writer._condition, caplog.at_level(logging.WARNING, logger="serving.records"):
        start = time.perf_counter()
        results = [_submit(writer, 2) for _ in range(4)]
        elapsed = time.perf_counter() - start
    writer.close()
    assert results == [True, True, False, False]
    assert elapsed < 1.0
    assert metrics.RECORDS_DROPPED.labels("queue_full")._value.get() - before == 4
    assert "writer is behind" in caplog.text
    assert len(read_records(tmp_path)) == 4, "what was queued is written at close"


def test_requests_written_in_one_batch_keep_their_own_scores_and_statistics(tmp_path):
    writer = RecordWriter(tmp_path)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8) for count in (2, 3)]
    scores = [np.array([0.1, 0.2]), np.array([0.7, 0.8, 0.9])]
    # Holding the writer's lock keeps its thread from taking either request: both go out in one write.
    with writer._condition:
        for images, probabilities in zip(batches, scores, strict=True):
            facts = [InputFacts(32, 32, "PNG", "RGB", False, 1)] * len(images)
            verdicts = ["REAL"] * len(images)
            assert writer.submit("7", "v2", probabilities, verdicts, facts, image_statistics(images))
    writer.close()
    records = read_records(tmp_path)
    assert [r["fake_probability"] for r in records] == pytest.approx(np.concatenate(scores).tolist())
    expected = image_statistics(np.concatenate(batches))
    for name in STAT_NAMES:
        assert [r[name] for r in records] == pytest.approx(expected[name].tolist()), name


def test_close_writes_everything_queued(tmp_path):
    writer = RecordWriter(tmp_path)
    for _ in range(50):
        _submit(writer, 3)
    writer.close()
    records = read_records(tmp_path)
    assert len(records) == 150
    assert set(records[0]) == RECORD_KEYS
    assert not _submit(writer, 1), "a closed writer takes nothing"


# ---- the web app's /metrics -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def web_two_workers(monitored, tmp_path_factory):
    """The web app under gunicorn with two worker processes and a metrics folder the test can see; yields its
    URL, its metrics server's URL and the folder."""
    url, _ = monitored
    root = tmp_path_factory.mktemp("web-metrics")
    port, metrics_port = free_port(), free_port()
    env = {
        "PREDICTOR_URL": url,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "WEB_METRICS_PORT": str(metrics_port),
        "WEB_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(root / "prometheus"),
    }
    (root / "prometheus").mkdir()
    (root / "prometheus" / "counter_1.db").write_bytes(b"left by an earlier server")
    web_url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "flask_app"], f"{web_url}/livez", root / "web.log", env):
        yield web_url, f"http://127.0.0.1:{metrics_port}", root / "prometheus"


def upload(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/api/predict", files={"image": ("x.jpg", data)}, timeout=TIMEOUT)


def test_web_metrics_are_served_on_their_own_port_and_not_on_the_public_one(web_two_workers):
    """The public port (the Ingress routes every path to it) answers /metrics 404; the metrics port, which
    only Prometheus may reach, serves them: request counts and error rates stay in the cluster."""
    url, metrics_url, _ = web_two_workers
    requests.get(f"{url}/livez", timeout=TIMEOUT)
    public = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert public.status_code == 404, public.text[:200]
    assert "deepguard_web" not in public.text
    assert value(scrape(metrics_url), "deepguard_web_requests_total", route="/livez", code="200") >= 1


def test_web_metrics_sum_over_gunicorn_workers(web_two_workers, sample_images):
    url, metrics_url, folder = web_two_workers
    assert not (folder / "counter_1.db").exists(), "a previous server's files are cleared at start"
    # Both workers must have answered something for the sum to mean anything: counter_<pid>.db files appear
    # when a worker first counts a request. New connections each time let either worker accept.
    for _ in range(200):
        if len(list(folder.glob("counter_*.db"))) >= 2:
            break
        requests.get(f"{url}/livez", timeout=TIMEOUT)
    assert len(list(folder.glob("counter_*.db"))) >= 2, "only one worker answered 200 requests"
    before = scrape(metrics_url)
    # At most the predictor slots of one worker at a time (WEB_THREADS - 1): one worker may accept every
    # client, and one more would be answered 503 busy, as designed.
    with ThreadPoolExecutor(web_threads() - 1) as pool:
        statuses = list(pool.map(lambda i: upload(url, sample_images.probe[i % 4]).status_code, range(12)))
    statuses.append(upload(url, b"%PDF-1.4").status_code)
    assert statuses == [200] * 12 + [415]
    for _ in range(6):  # scrapes must report both workers' counts
        after = scrape(metrics_url)
        assert moved(before, after, "deepguard_web_requests_total", route="/api/predict", code="200") == 12
    assert value(after, "deepguard_web_requests_total", route="/api/predict", code="415") >= 1
    assert moved(before, after, "deepguard_web_upload_bytes_count") == 13
    assert value(after, "deepguard_web_request_duration_seconds_count", route="/api/predict") >= 13
    requests.get(f"{url}/no/such/page", timeout=TIMEOUT)
    assert value(scrape(metrics_url), "deepguard_web_requests_total", route="unmatched", code="404") >= 1


def test_web_counts_predictor_errors(sample_images, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {
        "PREDICTOR_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "WEB_METRICS_PORT": str(metrics_port),
        "WEB_WORKERS": "1",
    }
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "flask_app"], f"{url}/livez", tmp_path / "web.log", env):
        status = upload(url, sample_images.probe[0]).status_code
        assert status >= 500
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        assert value(scrape(metrics_url), "deepguard_web_predictor_errors_total", code=str(status)) == 1


@pytest.mark.parametrize("operators", [False, True], ids=["made-by-the-app", "set-by-the-operator"])
def test_a_clean_stop_removes_the_metrics_folder_the_web_app_made_and_only_that(
    tmp_path, monkeypatch, operators
):
    """`python -m flask_app` makes a metrics folder under the temporary folder: stopping must not leave it."""
    temp, own, port, metrics_port = tmp_path / "tmp", tmp_path / "operators-folder", free_port(), free_port()
    temp.mkdir()
    own.mkdir()
    # Unset, not empty: prometheus_client counts into the working folder when the variable is set to "".
    monkeypatch.delenv(web_metrics.MULTIPROC_DIR_ENV, raising=False)
    monkeypatch.delenv(web_metrics.MADE_DIR_ENV, raising=False)
    env = {
        "PREDICTOR_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(port),
        "WEB_METRICS_PORT": str(metrics_port),
        "WEB_WORKERS": "1",
        "TMPDIR": str(temp),
    }
    if operators:
        # Inherited as if from a server that made it: the operator's setting still wins.
        env |= {web_metrics.MULTIPROC_DIR_ENV: str(own), web_metrics.MADE_DIR_ENV: str(own)}
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "flask_app"], f"{url}/livez", tmp_path / "web.log", env) as process:
        scrape(f"http://127.0.0.1:{metrics_port}")  # the worker has counted /livez: its files are there
        folders = [own] if operators else list(temp.glob("deepguard-web-metrics-*"))
        assert len(folders) == 1 and list(folders[0].glob("*.db")), folders
    assert process.returncode == 0, (tmp_path / "web.log").read_text()[-2000:]
    assert folders[0].is_dir() == operators
    if operators:
        assert list(own.glob("*.db")), "the operator's folder keeps its files"


@pytest.mark.parametrize(
    ("reexec_pid", "master_pid", "removed"),
    [(0, 0, True), (4321, 0, False), (0, 4321, False)],
    ids=["alone", "old-master-of-an-upgrade", "new-master-of-an-upgrade"],
)
def test_a_master_sharing_the_folder_in_a_usr2_upgrade_leaves_it(
    monkeypatch, tmp_path: Path, reexec_pid, master_pid, removed
):
    """During gunicorn's binary upgrade (USR2) two masters' workers count into the same folder."""
    from flask_app import gunicorn_conf

    monkeypatch.setenv(web_metrics.MULTIPROC_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(web_metrics.MADE_DIR_ENV, str(tmp_path))
    gunicorn_conf.on_exit(SimpleNamespace(reexec_pid=reexec_pid, master_pid=master_pid))
    assert tmp_path.is_dir() != removed


def test_web_metrics_in_one_process_use_the_default_registry(monkeypatch):
    from flask_app import create_app

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    client = create_app().test_client()
    client.get("/livez")
    assert client.get("/metrics").status_code == 404, "the app itself never serves its metrics"
    text = web_metrics.exposition().decode()
    assert 'deepguard_web_requests_total{code="200",route="/livez"}' in text


def test_a_taken_metrics_port_stops_the_web_app_with_one_line_naming_it(tmp_path):
    """A metrics port another program holds: gunicorn stops at once, saying which setting, not serving
    without metrics (the ServiceMonitor's target would be down for no reason anyone sees)."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = {
            **os.environ,
            "PREDICTOR_URL": f"http://127.0.0.1:{free_port()}",
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_METRICS_PORT": str(taken),
            "WEB_WORKERS": "1",
        }
        done = subprocess.run(
            [sys.executable, "-m", "flask_app"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"WEB_METRICS_PORT={taken}: cannot listen on 127.0.0.1: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_stale_multiprocess_files_are_cleared(monkeypatch, tmp_path: Path):
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    web_metrics.clear_multiprocess_dir()
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize("text", ['["not", "an", "object"]', '{"model_version": "3", "psi": "x"}'])
def test_a_drift_summary_edited_by_hand_never_fails_the_scrape(tmp_path, text):
    from prometheus_client import CollectorRegistry, generate_latest

    (tmp_path / "drift.json").write_text(text)
    registry = CollectorRegistry()
    registry.register(metrics.DriftCollector(tmp_path))
    exported = generate_latest(registry).decode()  # raised before: every predictor series lost with it
    assert "deepguard_drift_score_psi" not in exported
    assert ("deepguard_drift_detected{" in exported) is text.startswith("{")


@pytest.mark.parametrize(
    ("ts", "exported"),
    [("2026-12-01T12:00:00+00:00", 1796126400.0), (None, None), (5, None), ("yesterday", None)],
)
def test_the_drift_report_time_is_exported_for_its_age(tmp_path, ts, exported):
    # DeepGuardDriftReportStale fires on time() minus this: a monitor that stopped reporting shows as its age.
    from prometheus_client import CollectorRegistry

    (tmp_path / "drift.json").write_text(json.dumps({"model_version": "3", "drift": False, "ts": ts}))
    registry = CollectorRegistry()
    registry.register(metrics.DriftCollector(tmp_path))
    assert registry.get_sample_value("deepguard_drift_report_timestamp_seconds", {"model_version": "3"}) == (
        exported
    )
    assert registry.get_sample_value("deepguard_drift_detected", {"model_version": "3"}) == 0.0


def test_the_first_request_error_and_lost_record_are_seen_by_rate() -> None:
    """A counter's labelled series is born at its first increment, already at 1: Prometheus's rate() and
    increase() compare two scrapes, so the first success, first 5xx or first lost record of every pod went
    uncounted (a pod's only request of a quiet hour read as "no traffic"; a predictor's first outage minute
    showed one error too few). The series the alerts divide are exported at 0 before anything happens."""
    import subprocess

    script = (
        "import sys, serving.metrics; from flask_app import create_app; from prometheus_client import "
        "generate_latest; create_app({'PREDICTOR_URL': 'http://127.0.0.1:9'});"
        "sys.stdout.write(generate_latest().decode())"
    )
    env = {k: v for k, v in os.environ.items() if k != web_metrics.MULTIPROC_DIR_ENV}
    exposition = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=120
    ).stdout
    for line in (
        'deepguard_requests_total{code="200",protocol="v1"} 0.0',
        'deepguard_requests_total{code="200",protocol="v2"} 0.0',
        'deepguard_records_dropped_total{reason="queue_full"} 0.0',
        'deepguard_records_dropped_total{reason="write_error"} 0.0',
        'deepguard_web_predictor_errors_total{code="502"} 0.0',
        'deepguard_web_predictor_errors_total{code="503"} 0.0',
        'deepguard_web_predictor_errors_total{code="504"} 0.0',
    ):
        assert line in exposition.splitlines(), line
