"""The web app's Prometheus metrics, summed over gunicorn's worker processes, on a port of their own.

The app itself never answers ``/metrics`` (its port is the public one, behind the Ingress): gunicorn's master
serves them on ``WEB_METRICS_PORT`` (gunicorn_conf.py's ``when_ready``, as prometheus-flask-exporter's
``GunicornPrometheusMetrics.start_http_server_when_ready`` does), which only Prometheus is let reach.

Under gunicorn each worker is a process with its own counters; prometheus_client's multiprocess mode keeps
them in files under ``PROMETHEUS_MULTIPROC_DIR`` and the master's metrics server adds them up, so a scrape
reports the whole server (and is answered while every worker thread is busy). ``python -m flask_app`` creates
that folder before gunicorn starts (the variable must be set before prometheus_client is imported),
gunicorn_conf.py empties it at start-up, retires a dead worker's files and removes the folder on a clean stop
when ``python -m flask_app`` made it. Without the variable (the app in one process) the default registry is
used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from flask import Flask, Response, g, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The folder :func:`make_multiprocess_dir` made for this server, which a clean stop removes. Set beside
# MULTIPROC_DIR_ENV because gunicorn replaces the process that made it (it keeps the environment only).
MADE_DIR_ENV = "DEEPGUARD_WEB_MADE_METRICS_DIR"

# The label is "route", never "endpoint": prometheus-operator gives every target it scrapes an "endpoint"
# label (the port's name), which would rename ours "exported_endpoint" and empty every query selecting by it.
REQUESTS = Counter(
    "deepguard_web_requests_total", "Requests answered, by route and status code.", ["route", "code"]
)
REQUEST_SECONDS = Histogram(
    "deepguard_web_request_duration_seconds",
    "Time to answer a request, by route.",
    ["route"],
    buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
)
UPLOAD_BYTES = Histogram(
    "deepguard_web_upload_bytes",
    "Size of uploaded image files.",
    buckets=[2**k for k in range(10, 25)],
)
PREDICTOR_ERRORS = Counter(
    "deepguard_web_predictor_errors_total",
    "Predictor calls that failed, by the status the user was given (502/503/504: predictor unreachable, "
    "4xx: the predictor refused the image).",
    ["code"],
)


def multiprocess_dir() -> Path | None:
    """The multiprocess folder, or None when the app runs in one process."""
    value = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(value) if value else None


def make_multiprocess_dir() -> None:
    """Give the server a fresh folder under the temporary folder, unless the operator set one.

    Called by ``python -m flask_app`` before gunicorn imports prometheus_client, which reads it once.
    """
    if os.environ.get(MULTIPROC_DIR_ENV):
        # The operator's folder: never removed, whatever an inherited environment says.
        os.environ.pop(MADE_DIR_ENV, None)
        return
    folder = tempfile.mkdtemp(prefix="deepguard-web-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = os.environ[MADE_DIR_ENV] = folder


def remove_made_multiprocess_dir() -> None:
    """Remove the folder :func:`make_multiprocess_dir` made for this server (gunicorn's ``on_exit``)."""
    folder = os.environ.get(MADE_DIR_ENV)
    if folder and folder == os.environ.get(MULTIPROC_DIR_ENV):
        shutil.rmtree(folder, ignore_errors=True)


def clear_multiprocess_dir() -> None:
    """Remove the files a previous server left: their counts must not add to this one's."""
    folder = multiprocess_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.db"):
            path.unlink(missing_ok=True)


def worker_exited(pid: int) -> None:
    """Retire a dead worker's files (gunicorn's ``child_exit``); its counters stay in the totals."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: every worker's files, summed, in multiprocess mode; else this process's."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition() -> bytes:
    """The metrics in Prometheus's text format: every worker's, summed, in multiprocess mode."""
    return generate_latest(scrape_registry())


def serve_metrics(host: str, port: int) -> None:
    """Serve the metrics at ``http://<host>:<port>/metrics`` from a thread of this process (the master).

    Raises:
        OSError: the port cannot be bound (in use, not allowed); the server must not start without it.
    """
    start_http_server(port, addr=host, registry=scrape_registry())


def observe_upload(size: int) -> None:
    """Record the size of an uploaded file."""
    UPLOAD_BYTES.observe(size)


def observe_predictor_error(code: int) -> None:
    """Count a failed predictor call by the status the user got."""
    PREDICTOR_ERRORS.labels(str(code)).inc()


def install(app: Flask) -> None:
    """Count and time every request of ``app`` (served by :func:`serve_metrics`, not by ``app``)."""
    # A labelled series is born at its first increment, already at 1, which rate() never sees: the errors
    # DeepGuardWebPredictorErrors counts start at 0 in every worker, so a predictor's first failure counts.
    for code in ("502", "503", "504"):
        PREDICTOR_ERRORS.labels(code)

    @app.before_request
    def start_timer() -> None:
        g.metrics_start = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        # The route's pattern, not the path: an unknown path must not create a series of its own.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        REQUESTS.labels(route, str(response.status_code)).inc()
        start = g.get("metrics_start")
        if start is not None:
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - start)
        return response
