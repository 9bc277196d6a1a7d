"""The predictor's Prometheus metrics, in the registry KServe already serves at ``GET /metrics``.

Names follow Prometheus's conventions: a ``deepguard_`` prefix, base units (seconds, bytes) in the name, and
``_total`` on counters. Label values come from small fixed sets (verdicts, reasons, protocols, formats Pillow
names), never from what a client sends, so the number of series stays bounded.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from prometheus_client import REGISTRY, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily

from core.imaging import InputFacts
from core.names import DRIFT_LATEST

PREDICTIONS = Counter("deepguard_predictions_total", "Images scored, by verdict.", ["verdict"])
FAKE_PROBABILITY = Histogram(
    "deepguard_fake_probability",
    "P(FAKE) of each scored image.",
    buckets=[i / 20 for i in range(1, 21)],
)
DECODE_ERRORS = Counter(
    "deepguard_decode_errors_total",
    "Requests refused because an image could not be used, by reason.",
    ["reason"],
)
INPUTS = Counter(
    "deepguard_inputs_total", "Scored images by upload format (RAW: a pixel tensor).", ["format"]
)
INPUT_PIXELS = Histogram(
    "deepguard_input_pixels",
    "Width x height of each scored upload before it was resized to the model's input.",
    buckets=[32 * 32, 64 * 64, 128 * 128, 256 * 256, 512 * 512, 1024 * 1024, 2048 * 2048, 4096 * 4096, 40e6],
)
REQUEST_BYTES = Histogram(
    "deepguard_request_size_bytes",
    "Body size of inference requests, by protocol.",
    ["protocol"],
    buckets=[2**k for k in range(10, 31, 2)],
)
REQUEST_SECONDS = Histogram(
    "deepguard_request_duration_seconds",
    "Time from an inference request's arrival to its last response byte, by protocol.",
    ["protocol"],
    buckets=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
)
REQUESTS = Counter(
    "deepguard_requests_total",
    "Inference requests answered, by protocol and status code.",
    ["protocol", "code"],
)
BATCH_IMAGES = Histogram(
    "deepguard_model_batch_images",
    "Images per model call of the micro-batcher (concurrent requests scored together).",
    buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
)
# A labelled series is born at its first increment, already at 1, which rate() and increase() never see (they
# compare scrapes): the series the alerts divide start at 0, so a pod's first request or lost record counts.
for _protocol in ("v1", "v2"):
    REQUESTS.labels(_protocol, "200")
MODEL = Info("deepguard_model", "The model version being served.")
MODEL_INFO_LABELS = ("version", "architecture")
RECORDS_WRITTEN = Counter("deepguard_records_written_total", "Monitoring records written.")
RECORDS_DROPPED = Counter(
    "deepguard_records_dropped_total",
    "Monitoring records lost: queue_full (the writer fell behind) or write_error (store unwritable or full).",
    ["reason"],
)
for _reason in ("queue_full", "write_error"):
    RECORDS_DROPPED.labels(_reason)

# Decode-error reasons, matched on the start of the messages core.imaging and serving.model raise. A test
# reaches each reason through a real request, so a reworded message turns it red instead of going "malformed".
_REASONS: tuple[tuple[str, str], ...] = (
    ("invalid base64", "base64"),
    ("decompression bomb", "too_many_pixels"),
    ("pixels exceeds", "too_many_pixels"),
    ("pixels per request", "too_many_pixels"),
    ("bytes exceeds", "too_large"),
    ("larger than the limit", "too_large"),
    ("images exceeds", "too_many_images"),
    ("empty file", "empty"),
    ("not an image", "not_an_image"),
    ("corrupt or truncated", "corrupt"),
)
DECODE_REASONS = (*dict.fromkeys(reason for _, reason in _REASONS), "malformed")


def decode_error_reason(message: str) -> str:
    """The reason label of a refused request: one of :data:`DECODE_REASONS`."""
    for phrase, reason in _REASONS:
        if phrase in message:
            return reason
    return "malformed"


def observe_decode_error(exc: Exception) -> None:
    """Count a request refused while its images were read or decoded."""
    DECODE_ERRORS.labels(decode_error_reason(str(exc))).inc()


def counts_decode_errors(preprocess: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a model's ``preprocess``: each ``InvalidInput`` it raises is counted by reason, then re-raised."""

    @functools.wraps(preprocess)
    async def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess(*args, **kwargs)
        except InvalidInput as exc:
            observe_decode_error(exc)
            raise

    return counted


def observe_model_call(images: int) -> None:
    """Record the size of one model call."""
    BATCH_IMAGES.observe(images)


def set_model(version: str, architecture: str) -> None:
    """Publish the version now served (``deepguard_model_info{version=...} 1``)."""
    MODEL.info(dict(zip(MODEL_INFO_LABELS, (version, architecture), strict=True)))


def observe_scores(verdicts: Sequence[str], probabilities: np.ndarray, facts: Iterable[InputFacts]) -> None:
    """Count the verdicts, probabilities and inputs of one answered request."""
    for verdict in verdicts:
        PREDICTIONS.labels(verdict).inc()
    for probability in probabilities.tolist():
        FAKE_PROBABILITY.observe(probability)
    for fact in facts:
        INPUTS.labels(fact.format).inc()
        INPUT_PIXELS.observe(fact.width * fact.height)


def protocol_of(path: str) -> str | None:
    """``v1`` or ``v2`` for the inference endpoints (predict, explain, infer), None for any other path."""
    if path.startswith("/v1/models/") and path.endswith((":predict", ":explain")):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class RequestMetricsMiddleware:
    """Times inference requests and counts them by protocol and status, around everything else.

    Added outermost, so refusals of the other middlewares (413 body limit, 404 version) are counted too.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """ASGI entry: pass through, noting the status and the time to the last body byte."""
        protocol = protocol_of(scope.get("path", "")) if scope["type"] == "http" else None
        if protocol is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit():
            REQUEST_BYTES.labels(protocol).observe(int(declared))
        status = 500  # what the client sees when the app raises before it answers

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            REQUESTS.labels(protocol, str(status)).inc()
            REQUEST_SECONDS.labels(protocol).observe(time.perf_counter() - start)


class DriftCollector:
    """The drift monitor's latest summary: ``deepguard_drift_detected``, ``deepguard_drift_score_psi`` and
    ``deepguard_drift_report_timestamp_seconds``.

    The monitor (stages/monitor.py) writes ``drift.json`` into the monitoring folder the predictor records
    into; it is read at scrape time, so a new report shows without a restart. No file, no series.
    """

    def __init__(self, monitoring_dir: Path) -> None:
        self.path = monitoring_dir / DRIFT_LATEST

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Prometheus's collector protocol: yield the gauges (nothing before the first report)."""
        try:
            summary = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(summary, dict):  # edited by hand: an error here would fail the whole scrape
            return
        labels = ["model_version"]
        version = [str(summary.get("model_version"))]
        detected = GaugeMetricFamily(
            "deepguard_drift_detected", "1 when the latest drift report found drift.", labels=labels
        )
        detected.add_metric(version, 1.0 if summary.get("drift") else 0.0)
        yield detected
        try:  # the window's end: a report that stops coming (the monitor failing) shows as its age
            ended = datetime.fromisoformat(str(summary.get("ts"))).timestamp()
        except ValueError:
            ended = None
        if ended is not None:
            reported = GaugeMetricFamily(
                "deepguard_drift_report_timestamp_seconds",
                "End of the window of the latest drift report, in Unix seconds.",
                labels=labels,
            )
            reported.add_metric(version, ended)
            yield reported
        if isinstance(summary.get("psi"), int | float):
            psi = GaugeMetricFamily(
                "deepguard_drift_score_psi",
                "PSI of P(FAKE) in the latest drift report, against the champion's test scores.",
                labels=labels,
            )
            psi.add_metric(version, float(summary["psi"]))
            yield psi


def watch_drift(monitoring_dir: Path) -> None:
    """Export the drift monitor's latest summary from ``monitoring_dir`` (once per process)."""
    REGISTRY.register(DriftCollector(monitoring_dir))
