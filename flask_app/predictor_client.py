"""HTTP client of the predictor's V2 endpoint: the web app's only way to a model (no TensorFlow here)."""

from __future__ import annotations

import json
import re
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

# The predictor prefixes its messages with where the problem is ("input 'image' item 3: ..."); the web app
# names the uploaded file instead, so the prefix is cut and the item number kept.
_ITEM_PREFIX = re.compile(r"^input '[^']*'(?: item (?P<item>\d+))?: ")
# Its refusals of a request as a whole for its size ("request: 9 images of 108000000 pixels in all exceed
# ...", "request body larger than ..."): fewer images per request would be accepted.
_WHOLE_REQUEST_PREFIX = "request"
# Its refusals of one image for its size, in pixels or bytes ("too large: 7000x7000 pixels exceeds ...").
_SIZE_PREFIXES = ("too large", "larger than")
# V2's binary tensor extension: the length of the JSON header that starts the body, and the little-endian
# uint32 length before each BYTES element (KServe's and Triton's serialisation).
BINARY_HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
# Readiness checks are cheap on a healthy predictor; a slow answer is as good as none for a probe.
STATUS_TIMEOUT_S = 2.0


class PredictorError(Exception):
    """The predictor refused an image or could not be reached; ``status`` is the HTTP status to answer.

    ``item`` is the index of the image the predictor named, when it named one; ``whole_request`` is true when
    the predictor refused the request as a whole for its size (its pixels or bytes per request).
    """

    def __init__(
        self, status: int, message: str, item: int | None = None, *, whole_request: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.item = item
        self.whole_request = whole_request

    def after(self, count: int) -> PredictorError:
        """The same refusal for a request whose first ``count`` images came before this one's."""
        item = None if self.item is None else self.item + count
        return PredictorError(self.status, self.message, item, whole_request=self.whole_request)


@dataclass(frozen=True)
class Prediction:
    """What the predictor said about one image.

    ``note`` is the predictor's domain note ("" when none); ``input_size`` (width, height), ``input_format``
    and ``heatmap`` (32x32 rows in [0, 1]) are None when the predictor did not send them.
    """

    label: str
    verdict: str
    fake_probability: float
    note: str = ""
    input_size: tuple[int, int] | None = None
    input_format: str | None = None
    heatmap: list[list[float]] | None = None


@dataclass(frozen=True)
class Predictions:
    """One V2 response: a prediction per image, in request order, and the model that made them."""

    items: list[Prediction]
    model_version: str
    synthetic_data: bool


@dataclass(frozen=True)
class PredictorStatus:
    """What ``/healthz`` reports about the predictor."""

    ready: bool
    model_version: str | None
    detail: str


def _flat(data: Any) -> list:
    """V2 JSON tensors may arrive nested or flat (row-major); this reads both."""
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [value for row in data for value in _flat(row)]
    return list(data)


def parse_infer_response(result: dict[str, Any], count: int) -> Predictions:
    """Read a V2 inference response for ``count`` images.

    Outputs added by later predictors (``verdict``, ``note``, ``input_size``, ``input_format``, ``heatmap``)
    are optional, so the page works against a predictor that lacks them.

    Args:
        result: The response JSON.
        count: How many images the request carried.

    Returns:
        One prediction per image.

    Raises:
        KeyError, IndexError, ValueError, TypeError: the response does not have that shape.
    """
    outputs = {output["name"]: _flat(output["data"]) for output in result["outputs"]}
    shapes = {output["name"]: output.get("shape") for output in result["outputs"]}
    probabilities = [float(p) for p in outputs["fake_probability"]]
    labels = [str(label) for label in outputs["label"]]
    if len(probabilities) != count or len(labels) != count:
        raise ValueError(f"expected {count} predictions, got {len(probabilities)}")
    verdicts = [str(v) for v in outputs.get("verdict", labels)]
    notes = [str(n) for n in outputs.get("note", [""] * count)]
    sizes = outputs.get("input_size")
    formats = outputs.get("input_format")
    heatmaps = outputs.get("heatmap")
    if heatmaps is not None:
        # [N, height, width]: the served model's input side (params data.image_size), not always CIFAKE's 32.
        shape = shapes["heatmap"]
        if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == count):
            raise ValueError(f"heatmap shape {shape}, expected [{count}, height, width]")
        height, width = int(shape[1]), int(shape[2])
        cells = height * width
        if len(heatmaps) != count * cells:
            raise ValueError(f"heatmap has {len(heatmaps)} values, expected {count}x{height}x{width}")
    items = []
    for i in range(count):
        heatmap = None
        if heatmaps is not None:
            values = heatmaps[i * cells : (i + 1) * cells]
            # Three decimals are finer than any colour step the page draws, and keep 32 heatmaps small.
            heatmap = [
                [round(min(max(float(v), 0.0), 1.0), 3) for v in values[row : row + width]]
                for row in range(0, cells, width)
            ]
        items.append(
            Prediction(
                label=labels[i],
                verdict=verdicts[i],
                fake_probability=probabilities[i],
                note=notes[i],
                input_size=(int(sizes[2 * i]), int(sizes[2 * i + 1])) if sizes is not None else None,
                input_format=str(formats[i]) if formats is not None else None,
                heatmap=heatmap,
            )
        )
    parameters = result.get("parameters") or {}
    return Predictions(
        items=items,
        model_version=str(result.get("model_version") or "unknown"),
        synthetic_data=bool(parameters.get("synthetic_data", False)),
    )


class _Parts:
    """A request body sent as its parts, one after the other, without joining them into a copy.

    ``requests`` sends an object with ``read`` block by block, and ``len`` gives it the Content-Length.
    """

    def __init__(self, parts: Sequence[bytes]) -> None:
        self._parts = [memoryview(part) for part in parts]
        self._length = sum(len(part) for part in parts)
        self._index = 0

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left for a negative size); b"" at the end."""
        chunks, wanted = [], self._length if size is None or size < 0 else size
        while wanted > 0 and self._index < len(self._parts):
            part = self._parts[self._index]
            chunks.append(part[:wanted])
            wanted -= len(chunks[-1])
            if len(chunks[-1]) == len(part):
                self._index += 1
            else:
                self._parts[self._index] = part[len(chunks[-1]) :]
        return b"".join(chunks)


class PredictorClient:
    """Calls the predictor's V2 endpoints with the image files themselves; keeps one connection per thread."""

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

    def _drop_session(self) -> None:
        """Close this thread's connections; the next call opens a new one."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None
        self._local.answered = False

    def _request(
        self, method: str, url: str, body: Callable[[], Any] | None = None, **kwargs: Any
    ) -> requests.Response:
        """``method url`` on this thread's session, once more on a new connection if a kept-alive one failed.

        The predictor closes a connection idle for its keep-alive timeout (KServe: 65 s); a request sent on it
        as it closes is reset before any answer, and was a false "not available" (measured: 1 of 150 calls
        idle near the timeout). Like Go's HTTP client for an idempotent request on a reused connection, it is
        sent once more on a new one; a timeout is not retried (that would double the wait), nor a failure on a
        connection that had not answered before (the predictor is down). ``body`` makes the request body
        afresh for each try.

        Raises:
            requests.RequestException: as ``requests`` raises it.
        """
        reused = getattr(self._local, "answered", False)
        try:
            response = self._session.request(method, url, data=body() if body else None, **kwargs)
        except requests.Timeout:
            raise
        except requests.ConnectionError:
            if not reused:
                raise
            self._drop_session()
            response = self._session.request(method, url, data=body() if body else None, **kwargs)
        self._local.answered = True
        return response

    def predict(self, images: Sequence[bytes], *, explain: bool = False) -> Predictions:
        """Score encoded image files in one ``POST /v2/models/<name>/infer``.

        Args:
            images: The uploaded files' bytes (any format Pillow reads), in order.
            explain: Ask for a ``heatmap`` per image (request parameter ``explain``).

        Returns:
            A prediction per image and the model version.

        Raises:
            PredictorError: 422 for an image the predictor could not read (``item`` names it), 502/503/504
                when the predictor failed (or serves no model of that name), is down or too slow.
        """
        # The files go as they are, in V2's binary tensor extension (a JSON header, then each file after its
        # 4-byte length), not as base64 text in JSON: for 32 files of 2 MB the base64 string, the JSON text
        # and its bytes held a web worker at 5.5x the upload (340 MB for 62 MB of files), so two such uploads
        # went over the chart's 512 MiB limit. Sent part by part, not joined, they cost nothing more
        # (tests/serve/test_load.py).
        header: dict[str, Any] = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": sum(4 + len(image) for image in images)},
                }
            ]
        }
        if explain:
            header["parameters"] = {"explain": True}
        head = json.dumps(header).encode()
        parts = [head, *(part for image in images for part in (_LENGTH.pack(len(image)), image))]
        headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))}
        url = f"{self.base_url}/v2/models/{self.model_name}/infer"
        try:
            response = self._request(
                "POST", url, lambda: _Parts(parts), headers=headers, timeout=self.timeout_s
            )
        except requests.Timeout:
            raise PredictorError(504, "The detector took too long to answer; try again.") from None
        except requests.ConnectionError:
            raise PredictorError(503, "The detector is not available right now; try again shortly.") from None
        if response.status_code == 404:
            # KServe's answer for a model it does not serve: the web app is pointed at the wrong name.
            raise PredictorError(
                502, f"The detector does not serve a model named {self.model_name!r}; check MODEL_NAME."
            )
        if 400 <= response.status_code < 500:
            reason, item = self._reason(response)
            whole = item is None and reason.startswith(_WHOLE_REQUEST_PREFIX)
            # A file over a size limit was read: "huge.png is too large: 7000x7000 pixels exceeds ...".
            what = "is" if reason.startswith(_SIZE_PREFIXES) else "could not be read as an image:"
            raise PredictorError(422, f"{what} {reason}.", item, whole_request=whole)
        if response.status_code != 200:
            # uvicorn drops the connection after an unhandled error without saying so; reusing it would turn
            # the next call (the retry without heatmaps, say) into a "not available".
            self._drop_session()
            raise PredictorError(502, f"The detector failed (HTTP {response.status_code}); try again later.")
        try:
            return parse_infer_response(response.json(), len(images))
        except (ValueError, KeyError, IndexError, TypeError):
            raise PredictorError(502, "The detector sent an answer this page does not understand.") from None

    def model_metadata(self) -> dict[str, Any]:
        """``GET /v2/models/<name>``: the served model's metadata (``parameters.model_card`` when it has one).

        Raises:
            PredictorError: 503 when the predictor is down, 504 when too slow, 502 for any other failure.
        """
        url = f"{self.base_url}/v2/models/{self.model_name}"
        try:
            response = self._request("GET", url, timeout=STATUS_TIMEOUT_S)
        except requests.Timeout:
            raise PredictorError(504, "The detector took too long to answer; try again.") from None
        except requests.ConnectionError:
            raise PredictorError(503, "The detector is not available right now; try again shortly.") from None
        if response.status_code != 200:
            raise PredictorError(
                502, f"The detector could not describe its model (HTTP {response.status_code})."
            )
        try:
            metadata = response.json()
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise PredictorError(502, "The detector sent a model description this page does not understand.")
        return metadata

    def status(self) -> PredictorStatus:
        """Ask the predictor whether the model is ready and which version it serves."""
        url = f"{self.base_url}/v2/models/{self.model_name}"
        try:
            ready = self._request("GET", f"{url}/ready", timeout=STATUS_TIMEOUT_S)
            if ready.status_code != 200 or not ready.json().get("ready"):
                return PredictorStatus(False, None, f"model not ready (HTTP {ready.status_code})")
            versions = self._request("GET", url, timeout=STATUS_TIMEOUT_S).json().get("versions") or [None]
            return PredictorStatus(True, versions[0], "ready")
        except requests.RequestException as exc:
            return PredictorStatus(False, None, f"unreachable ({type(exc).__name__})")
        except ValueError:
            return PredictorStatus(False, None, "unexpected answer")

    @staticmethod
    def _reason(response: requests.Response) -> tuple[str, int | None]:
        """The predictor's message without its location prefix, and the item it named."""
        try:
            body = response.json()
            message = str(body.get("error") or body.get("detail") or "")
        except (ValueError, AttributeError):
            message = ""
        match = _ITEM_PREFIX.match(message)
        item = int(match["item"]) if match and match["item"] is not None else None
        reason = _ITEM_PREFIX.sub("", message).strip()
        return reason or f"rejected (HTTP {response.status_code})", item
