"""DeepGuard web app: upload an image, see REAL or FAKE and the probability; a thin predictor client."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from flask_app import feedback, metrics
from flask_app.predictor_client import PredictorClient, PredictorError

log = logging.getLogger(__name__)

DEFAULT_PREDICTOR_URL = "http://127.0.0.1:8080"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Shorter than the chart's liveness probe period (10 s), so a hung predictor never holds a thread through it.
DEFAULT_PREDICTOR_TIMEOUT_S = 5.0
UPLOAD_FIELD = "image"

# File signatures of the formats we forward. The predictor decodes with Pillow and has the final word;
# this check answers "that is a PDF" at once instead of a round trip.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
ACCEPTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def sniff_image_format(data: bytes) -> str | None:
    """Return the image format named by the file's first bytes, or None when it is not one we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def web_threads() -> int:
    """Threads per gunicorn worker: ``WEB_THREADS``, default 4 (gunicorn_conf.py reads it here too)."""
    return int(os.environ.get("WEB_THREADS", "4"))


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    Args:
        config: Overrides; by default ``PREDICTOR_URL``, ``MAX_CONTENT_LENGTH`` (bytes) and
            ``PREDICTOR_TIMEOUT_S`` come from the environment. ``PREDICTOR_SLOTS``: predictor calls one
            worker makes at once (default: one less than its threads, so one is always free for ``/livez``).

    Returns:
        The Flask app (gunicorn entry: ``flask_app:create_app()``).
    """
    app = Flask(__name__)
    app.config.update(
        PREDICTOR_URL=os.environ.get("PREDICTOR_URL", DEFAULT_PREDICTOR_URL),
        MODEL_NAME=os.environ.get("MODEL_NAME", "deepguard"),
        MAX_CONTENT_LENGTH=int(os.environ.get("MAX_CONTENT_LENGTH", DEFAULT_MAX_UPLOAD_BYTES)),
        PREDICTOR_TIMEOUT_S=float(os.environ.get("PREDICTOR_TIMEOUT_S", DEFAULT_PREDICTOR_TIMEOUT_S)),
        PREDICTOR_SLOTS=max(1, web_threads() - 1),
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    app.register_blueprint(feedback.blueprint)
    # gunicorn queues requests for a worker's threads: were every thread waiting on a hung predictor, /livez
    # would queue behind them and the pod get restarted. A request finding no free slot gets a 503 at once.
    slots = threading.BoundedSemaphore(app.config["PREDICTOR_SLOTS"])
    client = PredictorClient(
        app.config["PREDICTOR_URL"], app.config["MODEL_NAME"], app.config["PREDICTOR_TIMEOUT_S"]
    )
    max_mb = app.config["MAX_CONTENT_LENGTH"] / (1024 * 1024)
    metrics.install(app)

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            max_mb=f"{max_mb:g}",
            accepted=ACCEPTED_FORMATS,
            max_bytes=app.config["MAX_CONTENT_LENGTH"],
        )

    @app.post("/api/predict")
    def predict() -> tuple[Response, int] | Response:
        upload = request.files.get(UPLOAD_FIELD)
        if upload is None:
            return _error(400, f"No file was uploaded (multipart form field {UPLOAD_FIELD!r}).")
        data = upload.read()
        if not data:
            return _error(400, "The file is empty.")
        metrics.observe_upload(len(data))
        if sniff_image_format(data) is None:
            return _error(
                415, f"This file is not an image this service reads; upload a {ACCEPTED_FORMATS} file."
            )
        if not slots.acquire(blocking=False):
            return _busy()
        try:
            prediction = client.predict(data)
        except PredictorError as exc:
            metrics.observe_predictor_error(exc.status)
            if exc.status >= 500:
                log.warning("predictor error for %r: %s", upload.filename, exc.message)
            return _error(exc.status, exc.message)
        finally:
            slots.release()
        return jsonify(
            {
                "label": prediction.label,
                "fake_probability": prediction.fake_probability,
                "model_version": prediction.model_version,
                "synthetic_data": prediction.synthetic_data,
            }
        )

    @app.get("/livez")
    def livez() -> tuple[Response, int]:
        # Liveness is this process only: a predictor outage must not get the web pods restarted.
        return jsonify({"status": "alive"}), 200

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        if not slots.acquire(blocking=False):
            return _busy()
        try:
            status = client.status()
        finally:
            slots.release()
        body = {
            "status": "ok" if status.ready else "unavailable",
            "predictor": status.detail,
            "predictor_ready": status.ready,
            "model_version": status.model_version,
        }
        return jsonify(body), 200 if status.ready else 503

    def _busy() -> tuple[Response, int]:
        response, status = _error(503, "The detector is busy with other uploads; try again in a moment.")
        response.headers["Retry-After"] = "1"
        return response, status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
        return _error(413, f"The file is larger than the limit of {max_mb:g} MB.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/") or request.path in ("/healthz", "/livez"):
            response.headers["Cache-Control"] = "no-store"
        return response

    return app
