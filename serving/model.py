"""KServe predictor for the champion: V1 and V2 (Open Inference Protocol) inference, version, hot reload.

``python -m serving --model-uri models:/deepguard@champion`` loads the model (or a local MLflow model
folder such as KServe's ``/mnt/models``) and serves it with ``kserve.ModelServer``. Every uploaded image goes
through ``core.imaging.decode_for_model``, the function training's data went through, and the N images of a
request are scored by one model call. ``POST /v2/repository/models/deepguard/load`` re-resolves the URI and
swaps the new model in while requests keep being served.

Nothing that costs CPU runs on the event loop: decoding runs in a thread pool sized to the cores and the model
in its own thread, so health checks answer while the largest allowed request is decoded. Requests that arrive
while the model is busy are scored together in its next call (:class:`MicroBatcher`). Every request has a
budget checked before the work: body bytes and JSON values (413), images, bytes per image and pixels per
request (400).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import functools
import logging
import math
import os
import re
import struct
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (
    InferInput,
    RequestedOutput,
    deserialize_bytes_tensor,
    to_http_parameters,
)
from kserve.utils.numpy_codec import to_np_dtype

from core.imagestats import image_statistics
from core.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    InputFacts,
    decode_upload,
    facts_of,
    is_grayscale,
    read_header,
    to_model_input,
)
from core.labels import band_edge, decide, names
from core.modelstore import (
    ModelLoadError,
    ModelMetadata,
    download_model,
    load_model_dir,
    predict_fake_probability,
    read_model_card,
)
from core.settings import settings
from core.tracking import resolve_tracking_uri
from serving import metrics
from serving.domain import DEFAULT_MARGIN, domain_note, domain_verdicts
from serving.explain import Explainer, ExplainError, build_explainer
from serving.litert import MAX_BATCH as LITERT_MAX_BATCH
from serving.litert import LiteRTScorer, convert
from serving.records import RecordWriter

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_PROBABILITY = "fake_probability"
OUTPUT_LABEL = "label"
OUTPUT_VERDICT = "verdict"
OUTPUT_HEATMAP = "heatmap"  # only when the V2 request's parameter "explain" is true
EXPLAIN_PARAMETER = "explain"
# Domain notes (serving/domain.py): how each upload differed from the training images.
OUTPUT_NOTE = "note"
OUTPUT_INPUT_SIZE = "input_size"
OUTPUT_INPUT_FORMAT = "input_format"
# Batch sizes scored at load time, so the first real request pays no tracing: 1 and 2 on LiteRT (on Keras
# when it has none) and 64 on Keras, whose predict function takes any size once traced for two (LiteRT's
# 8-image probe is the other; tests/serve/test_litert.py checks that no call retraces).
_WARMUP_BATCHES = (1, 2, 64)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
# MLflow's error codes for "no such registered model" and "no such alias".
_NOT_REGISTERED = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
# Requests within all three are decoded on the event loop (DeepGuardModel._decode_request): at most ~1 ms.
INLINE_MAX_FILES = 4
INLINE_MAX_FILE_CHARS = 64 * 1024
INLINE_MAX_PIXELS = 4 * 128 * 128
# Error messages quote at most this much of what a client sent: a body is never echoed back.
_MAX_QUOTE_CHARS = 60
MAX_MESSAGE_CHARS = 300


def quote(value: Any) -> str:
    """``repr(value)``, cut short: names, datatypes and shapes in error messages come from the client."""
    text = repr(value)
    return text if len(text) <= _MAX_QUOTE_CHARS else text[:_MAX_QUOTE_CHARS] + "...'"


def base64_length(size: int) -> int:
    """Characters of the base64 encoding of ``size`` bytes."""
    return 4 * math.ceil(size / 3)


@dataclass(frozen=True)
class Limits:
    """What one request may carry; beyond these the client gets a 413 (body) or a 400 naming the limit."""

    max_images: int = 512
    max_image_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    # All images of one request together: 120 files of 6000x6000 held the decoders for a minute.
    max_request_pixels: int = 100_000_000
    # The largest request body. At its peak the predictor holds about four copies of a body (the bytes, the
    # parsed JSON, the decoded files, the images; 3.9x measured): 256 MiB keeps one request near 1 GiB, inside
    # the chart's 4 GiB, and carries the web app's largest upload (64 MiB of files, 86 MiB in base64) or 19
    # files of max_image_bytes. max_images such files would make 6.7 GiB, enough to have the pod killed.
    max_request_bytes: int = 256 * 1024 * 1024
    # Values (numbers, strings, ...) in a request's JSON. Each costs the predictor ~28 bytes held for the 2 it
    # takes to send ("0,"): a 200 MB V2 body of UINT8 numbers took it from 1.3 to 4.2 GB, past the chart's
    # 4 GiB, and held the event loop 34 s. 16 Mi values (~0.5 GB, ~2 s) carry 5,000 32x32 images as JSON
    # numbers, or a 5.5-megapixel one; larger pixel tensors go in the binary extension, files as BYTES.
    max_json_values: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version; replaced as a whole on reload, never mutated."""

    keras_model: Any
    metadata: ModelMetadata
    version: str
    uri: str
    explainer: Explainer | None = None  # None: the model has no convolutional stage to explain
    card: dict | None = None  # the version's model_card.json (stages/model_card.py), None when it has none
    litert: LiteRTScorer | None = None  # small calls' scorer (serving/litert.py); None: Keras scores all

    def score(self, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Return P(FAKE) and the class names for uint8 images ``(N, size, size, 3)``."""
        if self.litert is not None and 0 < len(images) <= LITERT_MAX_BATCH:
            probabilities = self.litert(images)
        else:
            probabilities = predict_fake_probability(self.keras_model, images)
        return probabilities, names(decide(probabilities, self.metadata.threshold))

    def explain(self, images: np.ndarray, fake: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps ``(N, size, size)`` in [0, 1] of the evidence for each image's label.

        Args:
            images: The uint8 images that were scored.
            fake: Per image, whether its label is FAKE (the map explains the label given).

        Returns:
            float32 heatmaps in the images' coordinates.

        Raises:
            InvalidInput: when the model has no explainer.
        """
        if self.explainer is None:
            raise InvalidInput(f"model version {self.version} has no convolutional stage to explain")
        return self.explainer(images, fake)


@dataclass(frozen=True)
class _Batch:
    """What ``preprocess`` hands to ``predict``: the images and the model version they are scored by."""

    served: ServedModel
    images: np.ndarray
    facts: list[InputFacts]  # per image: what the upload was before it became the model's input
    v2_request: Any  # kserve InferRequest for V2, None for V1
    explain: bool = False  # V2 parameter "explain": add heatmaps to the scores
    domain_margin: float = DEFAULT_MARGIN  # serving/domain.py: how much clearer a noted image's score must be
    # core.imagestats.image_statistics of ``images`` (domain notes, monitoring): computed in the decode pool,
    # or, for the images decoded on the event loop, by ``predict`` while the model thread scores them.
    stats: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class _Scores:
    batch: _Batch
    probabilities: np.ndarray
    labels: list[str]
    heatmaps: np.ndarray | None = None  # (N, size, size) when an explanation was asked for

    @property
    def _fine_detail(self) -> list[float | None]:
        stats = self.batch.stats
        return [None] * len(self.batch.facts) if stats is None else [float(v) for v in stats["hf_energy"]]

    @property
    def verdicts(self) -> list[str]:
        """REAL, FAKE or UNCERTAIN per image: the served model's bands and the domain policy."""
        metadata, batch = self.batch.served.metadata, self.batch
        return domain_verdicts(
            self.probabilities,
            metadata.bands,
            batch.facts,
            metadata.image_size,
            batch.domain_margin,
            self._fine_detail,
        )

    @property
    def notes(self) -> list[str]:
        """Per image, how the upload differed from the training images ("" when it did not)."""
        size = self.batch.served.metadata.image_size
        return [
            domain_note(fact, size, detail)
            for fact, detail in zip(self.batch.facts, self._fine_detail, strict=True)
        ]


@dataclass(frozen=True)
class _Job:
    served: ServedModel
    images: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Scores the images of concurrent requests in one model call, in a thread of its own.

    No request waits for a timer: the first one is handed to the model thread at once, and those that arrive
    while the model is busy are scored together in its next call (Triton's dynamic batching with no queue
    delay). That amortises the per-call overhead which otherwise caps single-image throughput at one client's
    rate. Each call's completion starts the next one from its callback, with no task in between.
    """

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.calls = 0  # model calls made; a test compares it with the requests served
        self._pending: collections.deque[_Job] = collections.deque()
        self._busy = False  # a model call is in flight
        # One thread: TensorFlow spreads one call over the cores itself; two calls would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepguard-model")

    def submit(self, served: ServedModel, images: np.ndarray) -> asyncio.Future:
        """Queue ``images`` for ``served``; the model thread starts on them now if it is idle.

        Returns:
            A future of P(FAKE) and the class names of ``images`` (scored possibly with other requests').
        """
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(served, images, future))
        if not self._busy:
            self._call_next()
        return future

    async def score(self, served: ServedModel, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """P(FAKE) and class names for ``images``, scored by ``served`` (possibly with other requests')."""
        return await self.submit(served, images)

    async def run(self, function: Any, *args: Any) -> Any:
        """``function(*args)`` in the model thread, between batched calls (the explainer runs there)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _next_batch(self) -> list[_Job]:
        """Pending jobs of one model version, up to ``max_images`` images (always at least one job)."""
        batch = [self._pending.popleft()]
        count = len(batch[0].images)
        while (
            self._pending
            and self._pending[0].served is batch[0].served
            and count + len(self._pending[0].images) <= self.max_images
        ):
            batch.append(self._pending.popleft())
            count += len(batch[-1].images)
        return batch

    def _call_next(self) -> None:
        batch = self._next_batch()
        self.calls += 1
        metrics.observe_model_call(sum(len(job.images) for job in batch))
        self._busy = True
        call = asyncio.get_running_loop().run_in_executor(self._executor, self._score, batch)
        call.add_done_callback(functools.partial(self._answer, batch))

    @staticmethod
    def _score(batch: list[_Job]) -> tuple[np.ndarray, list[str]]:
        """One model call for the batch's images (in the model thread)."""
        images = batch[0].images if len(batch) == 1 else np.concatenate([job.images for job in batch])
        return batch[0].served.score(images)

    def _answer(self, batch: list[_Job], call: asyncio.Future) -> None:
        """Hand each request its share of the call's result (or its error), then start the next call."""
        self._busy = False
        error = asyncio.CancelledError() if call.cancelled() else call.exception()
        probabilities, labels = call.result() if error is None else (None, None)
        start = 0
        for job in batch:
            end = start + len(job.images)
            if job.future.done():  # cancelled because its client went away
                pass
            elif error is None:
                job.future.set_result((probabilities[start:end], labels[start:end]))
            else:  # the model failed: every request of this call gets the error
                job.future.set_exception(error)
            start = end
        if self._pending:
            self._call_next()


def resolve_model(uri: str, dest: Path) -> tuple[Path, str]:
    """Find the model folder and its registry version for ``uri``.

    Args:
        uri: ``models:/name@alias``, ``models:/name/<version>``, another MLflow artifact URI, or a
            local folder.
        dest: Empty folder to download registry models into.

    Returns:
        The local MLflow model folder and the version string (for a local folder: env
        ``DEEPGUARD_MODEL_VERSION``, default ``unknown``).

    Raises:
        ModelLoadError: when the alias, version or folder does not exist.
    """
    match = _REGISTRY_URI.match(uri)
    if match:
        name, alias, version = match["name"], match["alias"], match["version"]
        import mlflow

        # Same store as the pipeline: DagsHub / MLFLOW_TRACKING_URI / the workspace's local sqlite store.
        tracking_uri = resolve_tracking_uri()
        mlflow.set_tracking_uri(tracking_uri)
        if alias:
            try:
                version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
            except Exception as exc:  # MlflowException for a missing model or alias; connection errors
                missing = getattr(exc, "error_code", "") in _NOT_REGISTERED
                hint = f" (in {tracking_uri}; `make pipeline` trains and registers one)" if missing else ""
                raise ModelLoadError(f"{uri}: cannot resolve alias: {exc}{hint}") from None
        # Download the resolved version, not the alias: the alias may move between the two calls.
        return download_model(f"models:/{name}/{version}", dest), version
    if _URI_SCHEME.match(uri) and not uri.startswith("file:"):  # runs:/..., s3://..., mlflow-artifacts:/...
        return download_model(uri, dest), settings().model_version
    folder = Path(uri.removeprefix("file://"))
    if not folder.is_dir():
        raise ModelLoadError(f"{uri}: no such model folder")
    return folder, settings().model_version


def load_served_model(uri: str) -> ServedModel:
    """Resolve, download, load and warm up the model behind ``uri`` (blocking; seconds)."""
    with tempfile.TemporaryDirectory(prefix="deepguard-model-") as tmp:
        folder, version = resolve_model(uri, Path(tmp))
        keras_model, metadata = load_model_dir(folder)
        card = read_model_card(folder)
    size = metadata.image_size
    litert, runtime = convert(keras_model, size)
    served = ServedModel(
        keras_model=keras_model, metadata=metadata, version=version, uri=uri, card=card, litert=litert
    )
    for batch in _WARMUP_BATCHES:
        served.score(np.zeros((batch, size, size, 3), dtype=np.uint8))
    try:  # traced for any batch size here, so the first explanation pays no tracing
        served = dataclasses.replace(served, explainer=build_explainer(keras_model, size))
    except ExplainError as exc:
        log.warning("%s: serving without explanations: %s", uri, exc)
    log.info(
        "loaded %s: version %s, %s, threshold %.4f, scored by %s%s",
        uri,
        version,
        metadata.architecture,
        metadata.threshold,
        runtime,
        " (TRAINED ON SYNTHETIC DATA)" if metadata.synthetic_data else "",
    )
    return served


def _binary_bytes(raw: bytes, where: str) -> np.ndarray:
    """A binary BYTES tensor's elements: each a 4-byte little-endian length, then that many bytes.

    Raises:
        InvalidInput: naming the layout when a length runs past the tensor (a file sent without its length
            claims about 3.7 GB: a JPEG's first bytes read as one).
    """
    try:
        return deserialize_bytes_tensor(raw)
    except struct.error:
        raise InvalidInput(
            f"{where}: the binary BYTES tensor's {len(raw)} bytes are not elements of a 4-byte little-endian "
            "length followed by that many bytes (a file sent as it is, without its length?)"
        ) from None


def parse_infer_request(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """Parse a V2 request: a JSON header of ``json_length`` bytes, then the tensors' bytes (binary extension).

    A plain JSON request is the case ``json_length == len(body)``.

    KServe 0.21's ``InferRequest.from_bytes`` re-encodes BYTES tensors as UTF-8 text, which fails for image
    files ("Failed to encode"); here they stay ``bytes``. Tensors sent inside the JSON are kept as sent.

    Args:
        body: The whole request body.
        json_length: The ``Inference-Header-Content-Length`` header.
        model_name: The model the request is for.

    Returns:
        The request, BYTES tensors as NumPy arrays of ``bytes``.

    Raises:
        InvalidInput: when the header, a tensor's size or the body's length do not agree.
    """
    if not body:
        raise InvalidInput('empty request body: expected a JSON object with an "inputs" list')
    if not 0 < json_length <= len(body):
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} {json_length} is outside the body's {len(body)} bytes"
        )
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('expected a JSON object with an "inputs" list')
    start, inputs = json_length, []
    for i, tensor in enumerate(header["inputs"]):
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        where = f"inputs[{i}]"
        # A non-object tensor has no shape, so the first test stops before .get() is called on it.
        if (
            not isinstance(shape, list)
            or not all(type(dim) is int for dim in shape)
            or not isinstance(tensor.get("name"), str)
            or not isinstance(tensor.get("datatype"), str)
        ):
            raise InvalidInput(
                f'{where}: expected {{"name": ..., "datatype": ..., "shape": [int, ...], "data": [...]}}'
            )
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"{where}: parameters must be a JSON object")
        size = parameters.get("binary_data_size")
        if "data" in tensor:
            data = tensor["data"]
        elif isinstance(size, int) and 0 <= size <= len(body) - start:
            raw = body[start : start + size]
            start += size
            dtype = to_np_dtype(tensor["datatype"])
            if dtype is None:
                raise InvalidInput(f"{where}: unknown datatype {quote(tensor['datatype'])}")
            data = _binary_bytes(raw, where) if tensor["datatype"] == "BYTES" else np.frombuffer(raw, dtype)
        else:
            raise InvalidInput(f"{where}: no data and no binary_data_size that fits the body")
        inputs.append(InferInput(tensor["name"], tensor["shape"], tensor["datatype"], data, parameters))
    if start != len(body):
        raise InvalidInput(f"the body has {len(body) - start} bytes after the tensors the header describes")
    requested = header.get("outputs") or []
    if not isinstance(requested, list) or not all(
        isinstance(output, dict)
        and isinstance(output.get("name"), str)
        and isinstance(output.get("parameters") or {}, dict)
        for output in requested
    ):
        raise InvalidInput('outputs: expected a list of {"name": ..., "parameters": {...}}')
    if not isinstance(header.get("id") or "", str) or not isinstance(header.get("parameters") or {}, dict):
        raise InvalidInput('expected "id" to be a string and "parameters" a JSON object')
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in requested]
    return InferRequest(
        model_name=model_name,
        request_id=header.get("id"),
        infer_inputs=inputs,
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


def explain_requested(request: InferRequest) -> bool:
    """The V2 request parameter ``explain``: a JSON boolean, absent meaning false.

    Raises:
        InvalidInput: when it is anything but a boolean (``"true"`` and ``1`` included: no guessing).
    """
    parameters = request.parameters or {}
    if request.from_grpc:
        parameters = to_http_parameters(parameters)
    if not isinstance(parameters, dict):
        raise InvalidInput(f'"parameters" must be a JSON object, got {type(parameters).__name__}')
    value = parameters.get(EXPLAIN_PARAMETER, False)
    if not isinstance(value, bool):
        raise InvalidInput(f'parameter "{EXPLAIN_PARAMETER}" must be true or false, got {quote(value)}')
    return value


def _grpc_parameters(facts: dict[str, Any]) -> dict[str, Any]:
    """Response parameters for gRPC, whose parameter values are bool, int64 or string only: floats as text."""
    return {key: repr(float(value)) if isinstance(value, float) else value for key, value in facts.items()}


def _tensor_values(tensor: Any, where: str) -> Any:
    """A V2 input's values: its JSON or typed ``data``, else its binary payload (HTTP's binary extension, or
    gRPC's ``raw_input_contents``, where KServe's own client puts numpy data by default)."""
    data = tensor.data
    if data is not None and not isinstance(data, list | tuple | np.ndarray):
        raise InvalidInput(f"{where}: data must be a list, got {type(data).__name__}")
    if data is not None and len(data):
        return data
    if getattr(tensor, "_raw_data", None) is None:  # no binary payload: the values sent are all there is
        # (KServe's as_numpy would reshape them and answer "cannot reshape array of size 0" for "data": [].)
        if data is None:
            raise InvalidInput(f"{where}: data must be a list, got null")
        return data
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError, struct.error) as exc:
        raise InvalidInput(f"{where}: unreadable binary data: {exc}") from None


def _flatten(data: Any) -> list:
    """V2 tensors may be sent nested; the BYTES input is a flat list of N items."""
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    flat: list = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list | tuple) else [item])
    return flat


class DeepGuardModel(Model):
    """The champion behind KServe's V1 and V2 endpoints, swappable at run time."""

    def __init__(
        self,
        name: str,
        model_uri: str,
        limits: Limits,
        records: RecordWriter | None = None,
        domain_margin: float = DEFAULT_MARGIN,
    ) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.limits = limits
        self.records = records  # None: no monitoring records (--no-monitoring)
        self.domain_margin = domain_margin
        self.served: ServedModel | None = None
        self._reload_lock = asyncio.Lock()
        # Decoding is Pillow and NumPy, which release the GIL: one thread per core keeps the event loop free.
        self.decode_pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="deepguard-decode"
        )
        self.batcher = MicroBatcher(limits.max_images)

    # ---- lifecycle -------------------------------------------------------------------------------
    def load(self) -> bool:
        """Load the model at start-up; ``ready`` only once it can score."""
        self.served = load_served_model(self.model_uri)
        metrics.set_model(self.served.version, self.served.metadata.architecture)
        self.ready = True
        return self.ready

    async def reload(self) -> ServedModel:
        """Re-resolve ``model_uri`` in a worker thread, then swap it in with one assignment.

        Requests keep being served by the old model meanwhile; a failed reload leaves it in place.
        """
        async with self._reload_lock:
            served = await asyncio.to_thread(load_served_model, self.model_uri)
            previous, self.served = self.served, served
            metrics.set_model(served.version, served.metadata.architecture)
            self.ready = True
        log.info(
            "reloaded %s: version %s -> %s",
            self.model_uri,
            previous.version if previous else "none",
            served.version,
        )
        return served

    @property
    def version(self) -> str:
        """The version being served."""
        return self.served.version if self.served else "none"

    def get_input_types(self) -> list[dict]:
        """V2 model metadata: encoded image files, one per item."""
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        """V2 model metadata: P(FAKE), class name, verdict, domain note and upload size/format per image."""
        return [
            {"name": OUTPUT_PROBABILITY, "datatype": "FP32", "shape": [-1]},
            {"name": OUTPUT_LABEL, "datatype": "BYTES", "shape": [-1]},
            {"name": OUTPUT_VERDICT, "datatype": "BYTES", "shape": [-1]},
            {"name": OUTPUT_NOTE, "datatype": "BYTES", "shape": [-1]},
            {"name": OUTPUT_INPUT_SIZE, "datatype": "INT32", "shape": [-1, 2]},
            {"name": OUTPUT_INPUT_FORMAT, "datatype": "BYTES", "shape": [-1]},
        ]

    def metadata_parameters(self) -> dict:
        """The ``parameters`` of ``GET /v2/models/<name>``: the served version's facts and model card."""
        served = self.served
        if served is None:
            return {}
        metadata = served.metadata
        # The edges the verdict uses (the threshold for a model without bands); null for an empty band.
        real_below, fake_above = (band_edge(edge) for edge in metadata.bands)
        return {
            "model_version": served.version,
            "threshold": metadata.threshold,
            "real_below": real_below,
            "fake_above": fake_above,
            "temperature": metadata.temperature,
            "calibration_bias": metadata.calibration_bias,
            "architecture": metadata.architecture,
            "synthetic_data": metadata.synthetic_data,
            "model_card": served.card,
        }

    async def explain(self, payload: _Batch, headers: dict[str, str] | None = None) -> _Scores:
        """V1 ``:explain`` (KServe calls it between preprocess and postprocess): scores and heatmaps.

        The scores come from the same call as ``:predict``'s, so an explanation never changes them; the
        heatmaps are Grad-CAM of the served model on the same decoded pixels, computed in the model thread.
        """
        scores = await self.predict(dataclasses.replace(payload, explain=False), headers)
        fake = decide(scores.probabilities, payload.served.metadata.threshold).astype(bool)
        heatmaps = await self.batcher.run(payload.served.explain, payload.images, fake)
        return dataclasses.replace(
            scores, batch=dataclasses.replace(scores.batch, explain=True), heatmaps=heatmaps
        )

    def validate(self, payload: Any) -> Any:
        """Validation happens in :meth:`preprocess`, which knows the model's limits."""
        return payload

    # ---- request decoding ------------------------------------------------------------------------
    def _file_bytes(self, item: Any, where: str) -> bytes:
        if isinstance(item, str):
            # Refuse oversized items before decoding their base64.
            if len(item) > base64_length(self.limits.max_image_bytes):
                raise InvalidInput(f"{where}: larger than the limit of {self.limits.max_image_bytes} bytes")
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"{where}: invalid base64 ({exc})") from None
        elif isinstance(item, bytes):  # the V2 binary extension carries the file itself
            data = item
        else:
            raise InvalidInput(f"{where}: expected a base64 string, got {type(item).__name__}")
        if len(data) > self.limits.max_image_bytes:
            raise InvalidInput(
                f"{where}: {len(data)} bytes exceeds the limit of {self.limits.max_image_bytes} bytes"
            )
        return data

    def _check_request_pixels(self, pixels: int, count: int) -> None:
        if pixels > self.limits.max_request_pixels:
            raise InvalidInput(
                f"request: {count} images of {pixels} pixels in all exceed the limit of "
                f"{self.limits.max_request_pixels} pixels per request"
            )

    def _checked_files(self, items: list[tuple[str, Any]]) -> list[tuple[str, bytes, int]]:
        """``(where, file, pixels)`` per item: base64 decoded, every header read, the pixel budget checked."""
        files, total = [], 0
        for where, item in items:
            data = self._file_bytes(item, where)
            try:
                width, height = read_header(data, max_pixels=self.limits.max_pixels).size
            except ImageError as exc:
                raise InvalidInput(f"{where}: {exc}") from None
            files.append((where, data, width * height))
            total += width * height
        self._check_request_pixels(total, len(files))
        return files

    @staticmethod
    def _decode_checked(
        files: list[tuple[str, bytes, int]], size: int, max_pixels: int, statistics: bool = True
    ) -> tuple[np.ndarray, list[InputFacts], dict[str, np.ndarray] | None]:
        """Decode checked files into model inputs, their upload facts and (or None) their statistics."""
        images, facts = [], []
        for where, data, _ in files:
            try:
                image, fact = decode_upload(data, size, max_pixels=max_pixels)
            except ImageError as exc:
                raise InvalidInput(f"{where}: {exc}") from None
            images.append(image)
            facts.append(fact)
        stacked = np.stack(images)
        return stacked, facts, image_statistics(stacked) if statistics else None

    def _decode_files(
        self, items: list[tuple[str, Any]], size: int
    ) -> tuple[np.ndarray, list[InputFacts], dict[str, np.ndarray]]:
        """Decode ``(where, item)`` pairs; every header is read and the pixel budget checked first."""
        return self._decode_checked(self._checked_files(items), size, self.limits.max_pixels)

    async def _decode_request(
        self, items: list[tuple[str, Any]], size: int
    ) -> tuple[np.ndarray, list[InputFacts], dict[str, np.ndarray] | None]:
        """Decode a request's files on the event loop when they are few and small, else in the decode pool.

        Handing a single small image to the pool and back costs about as much as decoding it (two thread
        hops, ~0.4 ms on 2 cores, for a 32x32 JPEG decoded in ~0.2 ms). Files are decoded here only when
        their encoded size and the pixels their headers claim are both small, so the loop is never held long.
        """
        loop = asyncio.get_running_loop()
        if len(items) > INLINE_MAX_FILES or any(
            not isinstance(item, str | bytes) or len(item) > INLINE_MAX_FILE_CHARS for _, item in items
        ):
            return await loop.run_in_executor(self.decode_pool, self._decode_files, items, size)
        files = self._checked_files(items)
        if sum(pixels for _, _, pixels in files) > INLINE_MAX_PIXELS:
            return await loop.run_in_executor(
                self.decode_pool, self._decode_checked, files, size, self.limits.max_pixels
            )
        # The statistics are left to predict, which computes them while the model thread scores the images.
        return self._decode_checked(files, size, self.limits.max_pixels, statistics=False)

    def _check_requested_outputs(self, request: InferRequest, explain: bool) -> None:
        """Refuse an output the answer will not have; KServe notices only when writing it, after scoring."""
        known = [output["name"] for output in self.get_output_types()]
        for output in request.request_outputs or []:
            if output.name == OUTPUT_HEATMAP and not explain:
                needs = f'the parameter "{EXPLAIN_PARAMETER}": true'
                raise InvalidInput(f"output {OUTPUT_HEATMAP!r} needs {needs}")
            if output.name not in [*known, OUTPUT_HEATMAP]:
                raise InvalidInput(f"unknown output {quote(output.name)}; the outputs are {', '.join(known)}")

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidInput(f"{what}: no images in the request")
        if count > self.limits.max_images:
            raise InvalidInput(
                f"{what}: {count} images exceeds the limit of {self.limits.max_images} per request"
            )

    def _v1_items(self, body: Any) -> list[tuple[str, Any]]:
        """The ``(where, base64 file)`` items of a V1 ``instances`` body; nothing decoded yet."""
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list):
            raise InvalidInput('expected {"instances": [{"image": {"b64": "<base64 image file>"}}, ...]}')
        self._check_count(len(instances), "instances")
        items = []
        for i, instance in enumerate(instances):
            where = f"instances[{i}]"
            encoded = instance.get("image", instance) if isinstance(instance, dict) else None
            if not isinstance(encoded, dict) or "b64" not in encoded:
                raise InvalidInput(f'{where}: expected {{"image": {{"b64": "<base64 image file>"}}}}')
            items.append((where, encoded["b64"]))
        return items

    def _v2_items(self, request: InferRequest) -> list[tuple[str, Any]] | None:
        """The ``(where, file)`` items of a V2 BYTES input; None for a UINT8 pixel tensor."""
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            got = ", ".join(quote(tensor.name) for tensor in request.inputs[:3]) or "none"
            raise InvalidInput(
                f"expected one input named {INPUT_NAME!r} (BYTES [N] or UINT8 [N,H,W,3]), got {got}"
            )
        tensor = request.inputs[0]
        where = f"input {INPUT_NAME!r}"
        if tensor.datatype == "UINT8":
            return None
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"{where}: datatype {quote(tensor.datatype)}; expected BYTES or UINT8")
        items = _flatten(_tensor_values(tensor, where))
        shape = list(tensor.shape)
        if len(shape) != 1 or shape[0] != len(items):
            raise InvalidInput(
                f"{where}: shape {quote(shape)} does not match {len(items)} items; expected [N]"
            )
        self._check_count(len(items), where)
        return [(f"{where} item {i}", item) for i, item in enumerate(items)]

    def _v2_pixels(
        self, tensor: Any, shape: list[int], where: str, size: int
    ) -> tuple[np.ndarray, list[InputFacts]]:
        if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
            raise InvalidInput(f"{where}: UINT8 shape {quote(shape)}; expected [N, H, W, 3]")
        self._check_count(shape[0], where)
        if shape[1] * shape[2] > self.limits.max_pixels:
            raise InvalidInput(
                f"{where}: {shape[2]}x{shape[1]} pixels exceeds the limit of {self.limits.max_pixels} pixels"
            )
        self._check_request_pixels(shape[0] * shape[1] * shape[2], shape[0])
        data = _tensor_values(tensor, where)  # its InvalidInput names the input already
        try:
            values = np.asarray(data)
            if values.size != int(np.prod(shape)) or not np.issubdtype(values.dtype, np.integer):
                raise ValueError(
                    f"expected {int(np.prod(shape))} integers, got {values.size} "
                    f"values of type {values.dtype}"
                )
            if values.size and (values.min() < 0 or values.max() > 255):
                raise ValueError("values outside 0..255")
            pixels = values.astype(np.uint8).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        from PIL import Image

        base = facts_of(Image.fromarray(pixels[0]))
        if shape[1:3] != [size, size]:  # other sizes are resized exactly as an uploaded file would be
            pixels = np.stack([to_model_input(Image.fromarray(image), size) for image in pixels])
        return pixels, [dataclasses.replace(base, grayscale=is_grayscale(image)) for image in pixels]

    def _v2_pixel_tensor(
        self, request: InferRequest, size: int
    ) -> tuple[np.ndarray, list[InputFacts], dict[str, np.ndarray]]:
        """A V2 UINT8 ``[N, H, W, 3]`` input as model inputs, facts and statistics (in the decode pool)."""
        tensor = request.inputs[0]
        images, facts = self._v2_pixels(tensor, list(tensor.shape), f"input {INPUT_NAME!r}", size)
        return images, facts, image_statistics(images)

    @metrics.counts_decode_errors
    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Batch:
        """Decode every image of a V1 or V2 request; a bad item raises ``InvalidInput``."""
        served = self.served  # one version scores the whole request, even if a reload lands meanwhile
        size = served.metadata.image_size
        if isinstance(payload, InferRequest):
            explain = explain_requested(payload)  # a bad value is refused before any image is decoded
            self._check_requested_outputs(payload, explain)
            items = self._v2_items(payload)
            if items is None:
                images, facts, stats = await asyncio.get_running_loop().run_in_executor(
                    self.decode_pool, self._v2_pixel_tensor, payload, size
                )
            else:
                images, facts, stats = await self._decode_request(items, size)
            return _Batch(served, images, facts, payload, explain, self.domain_margin, stats)
        content_type = (headers or {}).get("content-type", "none")
        json_type = content_type.split(";")[0].strip().lower() == "application/json"
        if isinstance(payload, bytes) and json_type:
            # KServe parses a V1 body only when its Content-Type is exactly application/json; with a charset
            # ("application/json; charset=utf-8", as .NET and Java clients send it) the raw body arrives here.
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"invalid JSON: {exc}") from None
        if isinstance(payload, dict):
            images, facts, stats = await self._decode_request(self._v1_items(payload), size)
            return _Batch(served, images, facts, None, False, self.domain_margin, stats)
        # KServe hands over the raw body of a content type not JSON (a JSON string body arrives as a str too)
        if isinstance(payload, bytes | str) and not json_type:
            content_type = quote(content_type)
            raise InvalidInput(
                f"expected Content-Type: application/json, got {content_type} "
                '(V1: {"instances": [{"image": {"b64": "<base64 image file>"}}]})'
            )
        raise InvalidInput('expected a JSON object body (V1: {"instances": [...]})')

    async def predict(self, payload: _Batch, headers: dict[str, str] | None = None) -> _Scores:
        """Score the request's images in one model call, shared with concurrent requests'."""
        if payload.explain:
            return await self.explain(payload, headers)
        scoring = self.batcher.submit(payload.served, payload.images)  # the model thread starts now
        if payload.stats is None:  # decoded on the event loop: the statistics overlap the model call
            payload = dataclasses.replace(payload, stats=image_statistics(payload.images))
        probabilities, labels = await scoring
        return _Scores(payload, probabilities, labels)

    def _observe(self, result: _Scores, verdict: list[str]) -> None:
        """Metrics and monitoring records of an answered request (records are written in the background)."""
        batch = result.batch
        metrics.observe_scores(verdict, result.probabilities, batch.facts)
        if self.records is not None:
            protocol = "v1" if batch.v2_request is None else "v2"
            self.records.submit(
                batch.served.version, protocol, result.probabilities, verdict, batch.facts, batch.stats
            )

    def postprocess(
        self,
        result: _Scores,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        """Shape the scores as a V1 ``predictions`` list or a V2 response (probability, label, verdict)."""
        served, count = result.batch.served, len(result.labels)
        verdict, notes, uploads = result.verdicts, result.notes, result.batch.facts
        facts = {
            "model_version": served.version,
            "threshold": served.metadata.threshold,
            "synthetic_data": served.metadata.synthetic_data,
            "architecture": served.metadata.architecture,
        }
        request = result.batch.v2_request
        self._observe(result, verdict)
        if request is None:
            predictions = [
                {
                    "label": label,
                    "verdict": decided,
                    "fake_probability": float(probability),
                    "input": {"width": upload.width, "height": upload.height, "format": upload.format},
                    "note": note,
                }
                for label, decided, probability, upload, note in zip(
                    result.labels, verdict, result.probabilities, uploads, notes, strict=True
                )
            ]
            if result.heatmaps is None:
                return {"predictions": predictions, "model_name": self.name, **facts}
            # :explain answers each image's whole prediction (the note says why UNCERTAIN) and its map.
            explanations = [
                {**prediction, "heatmap": heatmap.tolist()}
                for prediction, heatmap in zip(predictions, result.heatmaps, strict=True)
            ]
            return {"explanations": explanations, "model_name": self.name, **facts}
        outputs = [
            InferOutput(OUTPUT_PROBABILITY, [count], "FP32", data=result.probabilities.astype(np.float32)),
            InferOutput(OUTPUT_LABEL, [count], "BYTES", data=np.array(result.labels, dtype=np.object_)),
            InferOutput(OUTPUT_VERDICT, [count], "BYTES", data=np.array(verdict, dtype=np.object_)),
            InferOutput(OUTPUT_NOTE, [count], "BYTES", data=np.array(notes, dtype=np.object_)),
            InferOutput(
                OUTPUT_INPUT_SIZE,
                [count, 2],
                "INT32",
                data=np.array([[u.width, u.height] for u in uploads], dtype=np.int32).reshape(count, 2),
            ),
            InferOutput(
                OUTPUT_INPUT_FORMAT,
                [count],
                "BYTES",
                data=np.array([u.format for u in uploads], dtype=np.object_),
            ),
        ]
        if result.heatmaps is not None:
            heatmaps = result.heatmaps.astype(np.float32)
            outputs.append(InferOutput(OUTPUT_HEATMAP, list(heatmaps.shape), "FP32", data=heatmaps))
        if request.from_grpc and request.request_outputs:
            # KServe's to_grpc() answers every output; the protocol only those asked for, as to_rest() does.
            by_name = {output.name: output for output in outputs}
            outputs = [by_name[asked.name] for asked in request.request_outputs]
        if request.from_grpc and request.use_binary_outputs:
            # KServe answers raw gRPC inputs with raw outputs, but its to_grpc() tests an output's data for
            # truth and fails on an array of more than one value: the outputs are made raw here.
            for output in outputs:
                output.set_data_from_numpy(output.data, binary_data=True)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            model_version=served.version,
            parameters=_grpc_parameters(facts) if request.from_grpc else facts,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )
