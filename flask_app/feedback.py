"""``POST /api/feedback``: a user says the verdict was wrong; the image and the claim wait for review.

The store is core/feedback.py (standard library only, like core/formats.py and core/names.py, the only
modules of ``core`` the web app imports). Each client may send ``FEEDBACK_BURST`` items at once and then
one per ``60 / FEEDBACK_PER_MINUTE`` seconds (an in-process token bucket per client address: with several
gunicorn workers each enforces its own).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from core.feedback import MAX_PENDING_BYTES, FeedbackError, FeedbackStore
from core.names import MONITORING_DIR, MONITORING_DIR_ENV
from flask_app import environment

DEFAULT_PER_MINUTE = 6.0
DEFAULT_BURST = 5
FIELDS = ("claimed_label", "verdict", "fake_probability", "model_version")
_EXTENSION = "deepguard_feedback"
MAX_CLIENTS = 10_000  # buckets kept; the least recently seen client is forgotten first

blueprint = Blueprint("feedback", __name__)


class TokenBucket:
    """Per-client token buckets: ``burst`` requests at once, refilled at ``per_minute``.

    Args:
        per_minute: Sustained rate per client.
        burst: Bucket size.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Spend one token of ``client``.

        Returns:
            0 when allowed, else the seconds until a token is back.
        """
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
            return wait


@blueprint.record_once
def _configure(state: BlueprintSetupState) -> None:
    app: Flask = state.app
    monitoring = Path(os.environ.get(MONITORING_DIR_ENV, MONITORING_DIR))
    app.config.setdefault("FEEDBACK_DIR", str(monitoring / "feedback"))
    app.config.setdefault(
        "FEEDBACK_PER_MINUTE", environment.number("FEEDBACK_PER_MINUTE", DEFAULT_PER_MINUTE)
    )
    app.config.setdefault("FEEDBACK_BURST", environment.number("FEEDBACK_BURST", DEFAULT_BURST))
    app.config.setdefault(
        "FEEDBACK_MAX_PENDING_BYTES", environment.number("FEEDBACK_MAX_PENDING_BYTES", MAX_PENDING_BYTES)
    )
    app.extensions[_EXTENSION] = (
        FeedbackStore(
            Path(app.config["FEEDBACK_DIR"]),
            # The page's per-file upload limit: a file the page scored can be reported ("this is wrong").
            max_image_bytes=app.config["MAX_CONTENT_LENGTH"],
            max_pending_bytes=app.config["FEEDBACK_MAX_PENDING_BYTES"],
        ),
        TokenBucket(app.config["FEEDBACK_PER_MINUTE"], app.config["FEEDBACK_BURST"]),
    )


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


@blueprint.post("/api/feedback")
def submit() -> tuple[Response, int]:
    """Store one item: 201 ``{"id", "status", "created"}`` (``created`` false: the image was sent before)."""
    store, bucket = current_app.extensions[_EXTENSION]
    wait = bucket.take(request.remote_addr or "unknown")
    if wait:
        seconds = max(1, math.ceil(wait))  # whole seconds, rounded up: "try again in 0 s" would be refused
        response, status = _error(429, f"Too much feedback from this address; try again in {seconds} s.")
        response.headers["Retry-After"] = str(seconds)
        return response, status
    uploads = request.files.getlist("image")
    if not uploads:
        return _error(400, "image: no file was uploaded (multipart form field 'image').")
    if len(uploads) > 1:  # the first was stored and the others dropped, unsaid; each claim is about one image
        return _error(400, f"image: {len(uploads)} files were uploaded; send one item per request.")
    upload = uploads[0]
    missing = [name for name in FIELDS if not request.form.get(name)]
    if missing:
        return _error(400, f"{', '.join(missing)}: missing form field{'s' if len(missing) > 1 else ''}.")
    try:
        item, created = store.submit(
            upload.read(store.max_image_bytes + 1),  # never more than the cap in memory
            claimed_label=request.form["claimed_label"],
            verdict=request.form["verdict"],
            fake_probability=request.form["fake_probability"],
            model_version=request.form["model_version"],
        )
    except FeedbackError as exc:
        return _error(exc.status, f"{exc}.")
    return jsonify({"id": item.id, "status": item.status, "created": created}), 201
