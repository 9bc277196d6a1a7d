"""DeepGuard web app: upload images, see verdicts, heatmaps and the model card; a thin predictor client."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, jsonify, render_template, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from core.formats import ACCEPTED_FORMATS, sniff, unread_kind
from core.names import MODEL_NAME_ENV, PREDICTOR_PORT, PREDICTOR_URL_ENV, SERVED_MODEL_NAME
from flask_app import environment, feedback, metrics
from flask_app.predictor_client import Prediction, Predictions, PredictorClient, PredictorError

log = logging.getLogger(__name__)

DEFAULT_PREDICTOR_URL = f"http://127.0.0.1:{PREDICTOR_PORT}"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Several images at once: at most this many files, together at most this many bytes, in one predictor call.
MAX_BATCH_FILES = 32
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024
# Request bytes one worker holds at once (~1x each, from the form through the predictor's answer): two
# maximum batches. Its 7 predictor slots could otherwise hold 7 (448 MiB), and four near-maximum batches on
# the chart's 2 workers passed the pod's 512 MiB limit (OOM kill, every upload on the pod cut).
DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT = 2 * DEFAULT_MAX_BATCH_BYTES
# What a request of one file may hold beyond it: the multipart envelope and a few short form fields. The file
# itself is held to the per-file limit (read_upload); a request limit of just that refused a file under it.
MULTIPART_ALLOWANCE = 64 * 1024
# Shorter than the chart's liveness probe period (10 s), so a hung predictor never holds a thread through it.
DEFAULT_PREDICTOR_TIMEOUT_S = 5.0
UPLOAD_FIELD = "image"

BUSY_MESSAGE = "The detector is busy with other uploads; try again in a moment."
# Seconds a client is told to wait (Retry-After) after a 503: a free slot or upload budget comes back within
# a request's time; a predictor that is down or restarting takes longer (its readiness probe period is 5 s).
BUSY_RETRY_AFTER_S = 1
UNAVAILABLE_RETRY_AFTER_S = 5
# What /model shows about the served model besides its card: (parameter key, label).
MODEL_FACTS: tuple[tuple[str, str], ...] = (
    ("model_version", "Version"),
    ("architecture", "Architecture"),
    ("threshold", "Decision threshold"),
    ("real_below", "REAL at or below"),
    ("fake_above", "FAKE at or above"),
    ("temperature", "Calibration temperature"),
    ("calibration_bias", "Calibration logit offset"),
    ("synthetic_data", "Trained on synthetic data"),
)
# The band edges the predictor sends as null: that band is empty and decides nothing (docs/serving.md).
BAND_EDGES = frozenset({"real_below", "fake_above"})
EMPTY_BAND = "none (empty band: decides nothing)"

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


def web_threads() -> int:
    """Threads per gunicorn worker: ``WEB_THREADS``, default 8 (gunicorn_conf.py reads it here too).

    One thread is kept for ``/livez``, the others may call the predictor. gunicorn gives a connection to
    whichever worker wakes first, not to an idle one, so a worker's own slots must hold the usual concurrent
    uploads: with 4 (3 slots a worker) six clients at once were told "busy" for 67 % of their uploads.
    """
    return int(environment.number("WEB_THREADS", 8))


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


class UploadError(Exception):
    """An upload this app refuses before calling the predictor; ``status`` is the 4xx to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_upload(upload: FileStorage, name: str, max_bytes: int) -> bytes:
    """Read one uploaded file and check it is a non-empty image within the per-file limit.

    Args:
        upload: The multipart file.
        name: How messages name the file ("The file", or its file name in a batch).
        max_bytes: The per-file limit.

    Returns:
        The file's bytes.

    Raises:
        UploadError: 400 empty, 413 too large, 415 not an image we read.
    """
    data = upload.read()
    if not data:
        raise UploadError(400, f"{name} is empty.")
    metrics.observe_upload(len(data))
    if len(data) > max_bytes:
        raise UploadError(413, f"{name} is larger than the limit of {max_bytes / (1024 * 1024):g} MB.")
    # The predictor decodes with Pillow and has the final word; this answers "that is a PDF" at once.
    if sniff(data) is None:
        # Named when it is a kind people upload by mistake: "IMG_0001.HEIC is a HEIC photo, ...".
        what = unread_kind(data) or "not an image this service reads"
        raise UploadError(415, f"{name} is {what}; upload a {ACCEPTED_FORMATS} file.")
    return data


def no_file_message() -> str:
    """Why a request has no file in field ``image``: nothing there, or text where the file should be."""
    # A part without a file name is a text field: `curl -F image=<photo.jpg` sends the bytes that way.
    if UPLOAD_FIELD in request.form:
        return (
            f"The multipart form field {UPLOAD_FIELD!r} holds text, not a file; upload the file itself "
            f"(curl: -F {UPLOAD_FIELD}=@photo.jpg)."
        )
    return f"No file was uploaded (multipart form field {UPLOAD_FIELD!r})."


def parse_explain(value: str | None) -> bool:
    """The ``explain`` form field: absent or ``false`` -> no heatmaps, ``true`` -> heatmaps.

    Raises:
        UploadError: 400 for any other value.
    """
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise UploadError(400, f"explain must be true or false, got {value[:40]!r}.")


def prediction_json(name: str, prediction: Prediction) -> dict[str, Any]:
    """One image's result as the page reads it (``/api/predictions``)."""
    size = prediction.input_size
    return {
        "file": name,
        "label": prediction.label,
        "verdict": prediction.verdict,
        "fake_probability": prediction.fake_probability,
        "note": prediction.note,
        "input": None
        if size is None
        else {"width": size[0], "height": size[1], "format": prediction.input_format},
        "heatmap": prediction.heatmap,
    }


def model_facts(parameters: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, str]:
    """The serving facts of ``GET /v2/models/<name>`` that /model lists, as label -> text.

    Args:
        parameters: The metadata's ``parameters`` object ({} when the predictor sends none).
        metadata: The whole metadata, whose ``versions`` names the version when ``parameters`` does not.

    Returns:
        The facts the predictor gave, in a fixed order; a missing or null fact is left out, except a null
        band edge: that band is empty, which the page says.
    """
    values = dict(parameters)
    versions = metadata.get("versions")
    if values.get("model_version") is None and isinstance(versions, list) and versions:
        values["model_version"] = versions[0]
    facts = {}
    for key, label in MODEL_FACTS:
        value = values.get(key)
        if value is None and key in BAND_EDGES and key in values:
            facts[label] = EMPTY_BAND
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            facts[label] = "yes" if value else "no"
        else:  # 0.3504358232021332 read as the model card writes it (four places): 0.3504
            facts[label] = f"{value:.4f}" if isinstance(value, float) else str(value)
    return facts


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    Args:
        config: Overrides; by default ``PREDICTOR_URL``, ``MAX_CONTENT_LENGTH`` (bytes per file),
            ``MAX_BATCH_BYTES`` (bytes per request of several files), ``PREDICTOR_TIMEOUT_S`` and
            ``WEB_PROXY_HOPS`` (proxies in front whose ``X-Forwarded-For`` names the client) and
            ``MAX_UPLOAD_BYTES_IN_FLIGHT`` (request bytes one worker holds at once) come from the
            environment. ``PREDICTOR_SLOTS``: predictor calls one worker makes at once (default: one
            less than its threads, so one is always free for ``/livez``).

    Returns:
        The Flask app (gunicorn entry: ``flask_app:create_app()``).
    """
    app = Flask(__name__)
    app.config.update(
        PREDICTOR_URL=os.environ.get(PREDICTOR_URL_ENV, DEFAULT_PREDICTOR_URL),
        MODEL_NAME=os.environ.get(MODEL_NAME_ENV, SERVED_MODEL_NAME),
        MAX_CONTENT_LENGTH=environment.number("MAX_CONTENT_LENGTH", DEFAULT_MAX_UPLOAD_BYTES),
        MAX_BATCH_BYTES=environment.number("MAX_BATCH_BYTES", DEFAULT_MAX_BATCH_BYTES),
        MAX_UPLOAD_BYTES_IN_FLIGHT=environment.number(
            "MAX_UPLOAD_BYTES_IN_FLIGHT", DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT
        ),
        PREDICTOR_TIMEOUT_S=environment.number("PREDICTOR_TIMEOUT_S", DEFAULT_PREDICTOR_TIMEOUT_S),
        PREDICTOR_SLOTS=max(1, web_threads() - 1),
        WEB_PROXY_HOPS=environment.number("WEB_PROXY_HOPS", 0),
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    if app.config["WEB_PROXY_HOPS"] > 0:
        # Behind an Ingress every request comes from the proxy's address: the client's is the one the last
        # WEB_PROXY_HOPS proxies appended to X-Forwarded-For (the feedback rate limit is per client). Only
        # with a proxy in front: a client reaching the app directly could write the header itself.
        hops = app.config["WEB_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    app.register_blueprint(feedback.blueprint)
    # gunicorn queues requests for a worker's threads: were every thread waiting on a hung predictor, /livez
    # would queue behind them and the pod get restarted. A request finding no free slot gets a 503 at once.
    slots = threading.BoundedSemaphore(app.config["PREDICTOR_SLOTS"])
    client = PredictorClient(
        app.config["PREDICTOR_URL"], app.config["MODEL_NAME"], app.config["PREDICTOR_TIMEOUT_S"]
    )
    # Set while the last /healthz found the predictor unavailable. Its 503 is read by a checker (helm test, an
    # uptime probe), not by whoever reads the pod's log: the change is logged there, once, not at each check.
    predictor_down = threading.Event()
    # Request bytes this worker's requests hold now (see DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT).
    in_flight = {"bytes": 0}
    in_flight_lock = threading.Lock()
    in_flight_mb = app.config["MAX_UPLOAD_BYTES_IN_FLIGHT"] / (1024 * 1024)
    max_bytes = app.config["MAX_CONTENT_LENGTH"]
    max_mb = max_bytes / (1024 * 1024)
    batch_mb = app.config["MAX_BATCH_BYTES"] / (1024 * 1024)
    batch_too_large = f"The files together are larger than the limit of {batch_mb:g} MB."
    metrics.install(app)

    @app.before_request
    def request_limit() -> tuple[Response, int] | None:
        # MAX_CONTENT_LENGTH is a file's limit, which Flask would apply to the whole request; the batch route
        # sets its own.
        request.max_content_length = max_bytes + MULTIPART_ALLOWANCE
        # Nothing here decodes a compressed body: Werkzeug parsed a gzip multipart as no fields at all, and
        # the answer said no file was uploaded. The predictor refuses the same way (serving.server).
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if request.method == "POST" and encoding not in ("", "identity"):
            return _error(
                415, f"Content-Encoding {encoding} is not supported: send the request body uncompressed."
            )
        return None

    @app.before_request
    def same_origin_only() -> tuple[Response, int] | None:
        # A multipart POST is a "simple" request: any web page could make its visitors' browsers send
        # feedback (each visitor a fresh address for the per-client limit) or spend the detector's time.
        # Browsers say where a request comes from (Sec-Fetch-Site; older ones only Origin, whose host a proxy
        # that rewrites Host would make look foreign); scripts (curl, requests) send neither.
        if request.method != "POST":
            return None
        site, origin = request.headers.get("Sec-Fetch-Site"), request.headers.get("Origin")
        if site is not None:
            foreign = site in ("cross-site", "same-site")
        else:
            foreign = origin is not None and urlsplit(origin).netloc != request.host
        if foreign:
            return _error(
                403, "Requests from other web sites are refused; use this page or call the API directly."
            )
        return None

    @app.before_request
    def upload_budget() -> tuple[Response, int] | None:
        # Each upload is held in memory (~1x) from its form to the predictor's answer: a request is admitted
        # while this worker's requests in flight leave room for its Content-Length (one over the budget
        # alone is admitted when nothing else is in flight), else a 503 at once, before its body is read.
        if request.method != "POST":
            return None
        limit = (
            app.config["MAX_BATCH_BYTES"] if request.path == "/api/predictions" else max_bytes
        ) + MULTIPART_ALLOWANCE
        # A body over its route's limit is the 413's, not this; a chunked one may be as large as the limit.
        size = min(request.content_length if request.content_length is not None else limit, limit)
        with in_flight_lock:
            held = in_flight["bytes"]
            if held and held + size > app.config["MAX_UPLOAD_BYTES_IN_FLIGHT"]:
                admitted = False
            else:
                admitted = True
                in_flight["bytes"] = held + size
        if not admitted:
            return _retry_later(
                f"The server is holding {held / (1024 * 1024):.0f} MB of other uploads (its limit is "
                f"{in_flight_mb:g} MB at once); try again in a moment.",
                BUSY_RETRY_AFTER_S,
            )
        g.upload_bytes = size
        return None

    @app.teardown_request
    def release_upload_budget(_: BaseException | None) -> None:
        size = g.pop("upload_bytes", 0)
        if size:
            with in_flight_lock:
                in_flight["bytes"] -= size

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            max_mb=f"{max_mb:g}",
            accepted=ACCEPTED_FORMATS,
            max_bytes=max_bytes,
            max_files=MAX_BATCH_FILES,
            max_batch_bytes=app.config["MAX_BATCH_BYTES"],
        )

    @app.post("/api/predict")
    def predict() -> tuple[Response, int] | Response:
        # The API for one image (scripts use it): its fields stay as they were, the verdict and note added.
        uploads = request.files.getlist(UPLOAD_FIELD)
        if not uploads:
            return _error(400, no_file_message())
        if len(uploads) > 1:  # only the first was scored, and the answer did not say so
            return _error(
                400,
                f"{len(uploads)} files were uploaded; this route scores one "
                f"(POST /api/predictions takes up to {MAX_BATCH_FILES}).",
            )
        upload = uploads[0]
        name = upload.filename or "The file"  # "IMG_0001.HEIC is a HEIC photo ...", as the batch route says
        try:
            data = read_upload(upload, name, max_bytes)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        try:
            result = call_predictor([data], explain=False)
        except PredictorError as exc:
            return _predictor_error(exc, name)
        prediction = result.items[0]
        return jsonify(
            {
                "label": prediction.label,
                "fake_probability": prediction.fake_probability,
                "model_version": result.model_version,
                "synthetic_data": result.synthetic_data,
                "verdict": prediction.verdict,
                "note": prediction.note,
            }
        )

    @app.post("/api/predictions")
    def predictions() -> tuple[Response, int] | Response:
        # Up to MAX_BATCH_FILES files in field `image`, scored in one predictor call; every check names the
        # file it failed on, and all run before the predictor is called.
        # The limit is on the files; the multipart envelope around them is allowed for, as for one file.
        request.max_content_length = app.config["MAX_BATCH_BYTES"] + MULTIPART_ALLOWANCE
        uploads = request.files.getlist(UPLOAD_FIELD)
        if not uploads:
            return _error(400, no_file_message())
        if len(uploads) > MAX_BATCH_FILES:
            return _error(413, f"{len(uploads)} files were uploaded; the limit is {MAX_BATCH_FILES} at once.")
        names = [upload.filename or f"file {i + 1}" for i, upload in enumerate(uploads)]
        try:
            explain = parse_explain(request.form.get("explain"))
            files = [
                read_upload(upload, name, max_bytes) for upload, name in zip(uploads, names, strict=True)
            ]
        except UploadError as exc:
            return _error(exc.status, exc.message)
        if sum(len(data) for data in files) > app.config["MAX_BATCH_BYTES"]:
            return _error(413, batch_too_large)
        try:
            result = call_predictor(files, explain=explain)
        except PredictorError as exc:
            named = exc.item is not None and exc.item < len(names)
            return _predictor_error(exc, names[exc.item] if named else "A file")
        return jsonify(
            {
                "model_version": result.model_version,
                "synthetic_data": result.synthetic_data,
                "results": [prediction_json(n, p) for n, p in zip(names, result.items, strict=True)],
            }
        )

    def call_predictor(files: list[bytes], *, explain: bool) -> Predictions:
        """The files scored in a free slot; a request finding none is told the detector is busy."""
        if not slots.acquire(blocking=False):
            raise PredictorError(503, BUSY_MESSAGE)
        try:
            return score(files, explain=explain)
        except PredictorError as exc:
            metrics.observe_predictor_error(exc.status)
            if exc.status >= 500:
                log.warning("predictor error for %d file(s): %s", len(files), exc.message)
            raise
        finally:
            slots.release()

    def score(files: list[bytes], *, explain: bool) -> Predictions:
        """One predictor call, or as many as the predictor's budget per request needs."""
        try:
            return client.predict(files, explain=explain)
        except PredictorError as exc:
            if not (exc.whole_request and len(files) > 1):
                # Heatmaps are an extra: when the predictor fails to explain (a 5xx) or cannot (a model
                # without a convolutional stage: a refusal naming no image), the verdicts still come back and
                # the page hides its toggle. Not after a 503/504: that would double the wait.
                cannot = exc.status == 422 and exc.item is None and not exc.whole_request
                if not (explain and (exc.status == 502 or cannot)):
                    raise
                log.warning("explaining %d file(s) failed (%s); answering without heatmaps", len(files), exc)
                return client.predict(files, explain=False)
        # Over the predictor's pixels (or bytes) per request (nine 12-megapixel photos exceed its default
        # 100 M): each half is scored the same way, so a batch takes as many calls as it needs.
        half = len(files) // 2
        first = score(files[:half], explain=explain)
        try:
            second = score(files[half:], explain=explain)
        except PredictorError as exc:
            raise exc.after(half) from None
        if second.model_version != first.model_version:
            raise PredictorError(503, "The detector changed models while scoring; try again.")
        return dataclasses.replace(first, items=first.items + second.items)

    @app.get("/model")
    def model_card() -> tuple[str, int, dict[str, str]] | str:
        try:
            metadata = client.model_metadata()
        except PredictorError as exc:
            page = render_template("unavailable.html", message=exc.message, status=exc.status)
            headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)} if exc.status == 503 else {}
            return page, exc.status, headers
        parameters = metadata.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        card = parameters.get("model_card")
        return render_template(
            "model.html",
            card=card if isinstance(card, dict) else None,
            facts=model_facts(parameters, metadata),
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
        if not status.ready and not predictor_down.is_set():
            predictor_down.set()
            log.warning(
                "predictor at %s not ready: %s; /healthz answers 503 and uploads fail until it is",
                app.config["PREDICTOR_URL"],
                status.detail,
            )
        elif status.ready and predictor_down.is_set():
            predictor_down.clear()
            log.info("predictor ready again (model version %s)", status.model_version)
        body = {
            "status": "ok" if status.ready else "unavailable",
            "predictor": status.detail,
            "predictor_ready": status.ready,
            "model_version": status.model_version,
        }
        return jsonify(body), 200 if status.ready else 503

    def _retry_later(message: str, seconds: int) -> tuple[Response, int]:
        response, status = _error(503, message)
        response.headers["Retry-After"] = str(seconds)
        return response, status

    def _busy() -> tuple[Response, int]:
        return _retry_later(BUSY_MESSAGE, BUSY_RETRY_AFTER_S)

    def _predictor_error(exc: PredictorError, unreadable: str) -> tuple[Response, int]:
        """The JSON error for a failed predictor call; ``unreadable`` names the file the predictor refused."""
        if exc.message == BUSY_MESSAGE:
            return _busy()
        if exc.status == 503:  # not available, or changed models while scoring: a client's retry is right
            return _retry_later(exc.message, UNAVAILABLE_RETRY_AFTER_S)
        return _error(exc.status, f"{unreadable} {exc.message}" if exc.status == 422 else exc.message)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
        # Werkzeug raises the same for a form of too many parts or a long text field (Flask's
        # MAX_FORM_PARTS, MAX_FORM_MEMORY_SIZE) in a request well under the byte limit: it was told "the
        # file is larger than 10 MB".
        length, limit = request.content_length, request.max_content_length
        if length is not None and limit is not None and length <= limit:
            return _error(
                413,
                f"The form has more than {app.config['MAX_FORM_PARTS']:,} parts or a text field over "
                f"{app.config['MAX_FORM_MEMORY_SIZE']:,} bytes; send each image as a file in field "
                f"{UPLOAD_FIELD!r}.",
            )
        if request.path == "/api/predictions":
            return _error(413, batch_too_large)
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
