"""HTTP client of the predictor's V2 endpoint: the web app's only way to a model (no TensorFlow here)."""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass

import requests

# The predictor prefixes its messages with where the problem is ("input 'image' item 0: ..."); a web user
# uploaded one file, so only the reason is shown.
_ITEM_PREFIX = re.compile(r"^input '[^']*'(?: item \d+)?: ")
# Readiness checks are cheap on a healthy predictor; a slow answer is as good as none for a probe.
STATUS_TIMEOUT_S = 2.0


class PredictorError(Exception):
    """The predictor refused the image or could not be reached; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    """One verdict as the predictor gave it."""

    label: str
    fake_probability: float
    model_version: str
    synthetic_data: bool


@dataclass(frozen=True)
class PredictorStatus:
    """What ``/healthz`` reports about the predictor."""

    ready: bool
    model_version: str | None
    detail: str


class PredictorClient:
    """Calls ``POST /v2/models/<name>/infer`` with one base64 image; keeps one connection per thread."""

    def __init__(self, base_url: str, model_name: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._local = threading.local()

    @property
    def _session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe; gunicorn's gthread workers get one each.
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def predict(self, image: bytes) -> Prediction:
        """Score one encoded image file.

        Args:
            image: The uploaded file's bytes (any format Pillow reads).

        Returns:
            The verdict, probability and model version.

        Raises:
            PredictorError: 422 for an image the predictor could not read, 502/503/504 when the predictor
                failed, is down or too slow.
        """
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(image).decode("ascii")],
                }
            ]
        }
        url = f"{self.base_url}/v2/models/{self.model_name}/infer"
        try:
            response = self._session.post(url, json=body, timeout=self.timeout_s)
        except requests.Timeout:
            raise PredictorError(504, "The detector took too long to answer; try again.") from None
        except requests.ConnectionError:
            raise PredictorError(503, "The detector is not available right now; try again shortly.") from None
        if 400 <= response.status_code < 500:
            raise PredictorError(422, f"The file could not be read as an image: {self._reason(response)}.")
        if response.status_code != 200:
            raise PredictorError(502, f"The detector failed (HTTP {response.status_code}); try again later.")
        try:
            result = response.json()
            outputs = {output["name"]: output["data"] for output in result["outputs"]}
            parameters = result.get("parameters") or {}
            return Prediction(
                label=str(outputs["label"][0]),
                fake_probability=float(outputs["fake_probability"][0]),
                model_version=str(result.get("model_version") or "unknown"),
                synthetic_data=bool(parameters.get("synthetic_data", False)),
            )
        except (ValueError, KeyError, IndexError, TypeError):
            raise PredictorError(502, "The detector sent an answer this page does not understand.") from None

    def status(self) -> PredictorStatus:
        """Ask the predictor whether the model is ready and which version it serves."""
        url = f"{self.base_url}/v2/models/{self.model_name}"
        try:
            ready = self._session.get(f"{url}/ready", timeout=STATUS_TIMEOUT_S)
            if ready.status_code != 200 or not ready.json().get("ready"):
                return PredictorStatus(False, None, f"model not ready (HTTP {ready.status_code})")
            versions = self._session.get(url, timeout=STATUS_TIMEOUT_S).json().get("versions") or [None]
            return PredictorStatus(True, versions[0], "ready")
        except requests.RequestException as exc:
            return PredictorStatus(False, None, f"unreachable ({type(exc).__name__})")
        except ValueError:
            return PredictorStatus(False, None, "unexpected answer")

    @staticmethod
    def _reason(response: requests.Response) -> str:
        try:
            message = str(response.json().get("error") or response.json().get("detail") or "")
        except ValueError:
            message = ""
        return _ITEM_PREFIX.sub("", message).strip() or f"rejected (HTTP {response.status_code})"
