"""The KServe predictor over real HTTP: V1 and V2 round trips, one preprocessing, metadata, and bad inputs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from ci_skips import on_this_machine
from kserve.errors import InvalidInput
from PIL import Image

from core.formats import ACCEPTED_FORMATS
from core.imagestats import image_statistics
from core.imaging import decode_for_model, decode_upload
from core.labels import EMPTY_FAKE_BAND, EMPTY_REAL_BAND, decide, names, verdicts
from core.modelstore import download_model, load_model_dir, predict_fake_probability
from serving import model as serving_model
from serving.domain import DEFAULT_MARGIN, domain_notes, domain_verdicts
from serving.model import DeepGuardModel, Limits, MicroBatcher, ServedModel
from serving.server import VersionedDataPlane

from .serving_helpers import REPO

TIMEOUT = 60


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def v2_body(files: list[bytes]) -> dict:
    return {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": [b64(f) for f in files]}
        ]
    }


def v1_body(files: list[bytes]) -> dict:
    return {"instances": [{"image": {"b64": b64(f)}} for f in files]}


def v2_infer(url: str, body: dict | bytes, **kwargs) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(
            f"{url}/v2/models/deepguard/infer",
            data=body,
            timeout=TIMEOUT,
            headers={"Content-Type": "application/json"},
            **kwargs,
        )
    return requests.post(f"{url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT, **kwargs)


def v1_predict(url: str, body: dict | bytes) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(
            f"{url}/v1/models/deepguard:predict",
            data=body,
            timeout=TIMEOUT,
            headers={"Content-Type": "application/json"},
        )
    return requests.post(f"{url}/v1/models/deepguard:predict", json=body, timeout=TIMEOUT)


def outputs(response: requests.Response) -> dict[str, list]:
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


@pytest.fixture(scope="module")
def in_process(registered_model, tmp_path_factory):
    """The registered version loaded in this process: the reference the servers must match."""
    import mlflow

    mlflow.set_tracking_uri(registered_model.tracking_uri)
    folder = download_model(f"models:/deepguard/{registered_model.version}", tmp_path_factory.mktemp("ref"))
    return load_model_dir(folder)


def reference(in_process, files: list[bytes]) -> tuple[np.ndarray, list[str]]:
    model, metadata = in_process
    images = np.stack([decode_for_model(f, metadata.image_size) for f in files])
    probabilities = predict_fake_probability(model, images)
    return probabilities, names(decide(probabilities, metadata.threshold))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def odd_images() -> list[bytes]:
    """Not 32x32 RGB JPEGs: other sizes, modes and formats, which serving must resize like training."""
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (60, 100, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (500, 300), dtype=np.uint8), "L")
    gif = io.BytesIO()
    gray.save(gif, format="GIF")
    webp = io.BytesIO()
    rgba.convert("RGB").save(webp, format="WEBP")
    avif = io.BytesIO()
    rgba.convert("RGB").resize((48, 40)).save(avif, format="AVIF")
    small = png_bytes(gray.convert("RGB").resize((7, 5)))
    return [png_bytes(rgba), gif.getvalue(), webp.getvalue(), avif.getvalue(), small]


def test_v2_round_trip_matches_the_in_process_model(predictor, registered_model, sample_images, in_process):
    files = sample_images.probe + odd_images()
    response = v2_infer(predictor.url, v2_body(files))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "deepguard"
    assert body["model_version"] == registered_model.version
    assert body["parameters"]["synthetic_data"] is False
    by_name = {output["name"]: output for output in body["outputs"]}
    assert by_name["fake_probability"]["datatype"] == "FP32"
    assert by_name["fake_probability"]["shape"] == [len(files)]
    assert by_name["label"]["datatype"] == "BYTES"
    expected_probabilities, expected_labels = reference(in_process, files)
    np.testing.assert_allclose(by_name["fake_probability"]["data"], expected_probabilities, atol=1e-5, rtol=0)
    assert by_name["label"]["data"] == expected_labels
    # The verdict uses the bands evaluate chose and register wrote into the version's metadata, and the domain
    # policy for the odd images (tests/serve/test_domain_notes.py).
    metadata = in_process[1]
    metrics = json.loads((registered_model.root / "reports/metrics.json").read_text())
    assert metadata.bands == (metrics["real_below"], metrics["fake_above"])
    decoded = [decode_upload(f, metadata.image_size) for f in files]
    fine_detail = image_statistics(np.stack([image for image, _ in decoded]))["hf_energy"]
    expected_verdicts = domain_verdicts(
        expected_probabilities,
        metadata.bands,
        [fact for _, fact in decoded],
        metadata.image_size,
        DEFAULT_MARGIN,
        fine_detail,
    )
    assert by_name["verdict"]["data"] == expected_verdicts
    # Native: no note (two of the sixteen probes are grey, serving/domain.py notes them; none lacks detail).
    native = [
        i
        for i, (_, fact) in enumerate(decoded)
        if not domain_notes(fact, metadata.image_size, float(fine_detail[i]))
    ]
    assert len(native) >= len(sample_images.probe) - 2
    band_verdicts = verdicts(np.asarray(by_name["fake_probability"]["data"]), *metadata.bands)
    assert [by_name["verdict"]["data"][i] for i in native] == [band_verdicts[i] for i in native]
    # The model learned something from one epoch: the probe images' scores are not all the same.
    assert np.ptp(expected_probabilities) > 1e-3


def test_v1_round_trip_matches_the_in_process_model(predictor, registered_model, sample_images, in_process):
    files = sample_images.probe
    response = v1_predict(predictor.url, v1_body(files))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == registered_model.version
    predictions = body["predictions"]
    assert len(predictions) == len(files)
    assert set(predictions[0]) == {"label", "verdict", "fake_probability", "input", "note"}
    expected_probabilities, expected_labels = reference(in_process, files)
    got = [p["fake_probability"] for p in predictions]
    np.testing.assert_allclose(got, expected_probabilities, atol=1e-5, rtol=0)
    assert [p["label"] for p in predictions] == expected_labels


def test_v2_uint8_tensor_equals_the_encoded_file_route(predictor, sample_images, in_process):
    files = sample_images.probe[:4]
    pixels = np.stack([decode_for_model(f, 32) for f in files])
    big = np.stack([np.asarray(Image.fromarray(p).resize((40, 40))) for p in pixels])  # resized on the server
    for tensor in (pixels, big):
        body = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(tensor.shape),
                    "data": tensor.reshape(-1).tolist(),
                }
            ]
        }
        response = v2_infer(predictor.url, body)
        assert response.status_code == 200, response.text
        if tensor is pixels:
            expected, _ = reference(in_process, files)
        else:
            expected = predict_fake_probability(
                in_process[0], np.stack([decode_for_model(png_bytes(Image.fromarray(p)), 32) for p in big])
            )
        np.testing.assert_allclose(outputs(response)["fake_probability"], expected, atol=1e-5, rtol=0)


def test_metadata_health_and_metrics(predictor, registered_model):
    metadata = requests.get(f"{predictor.url}/v2/models/deepguard", timeout=TIMEOUT)
    assert metadata.status_code == 200
    body = metadata.json()
    assert body["versions"] == [registered_model.version]
    assert [tensor["name"] for tensor in body["inputs"]] == ["image"]
    assert [tensor["name"] for tensor in body["outputs"]] == [
        "fake_probability",
        "label",
        "verdict",
        "note",
        "input_size",
        "input_format",
    ]
    assert requests.get(f"{predictor.url}/v2/health/ready", timeout=TIMEOUT).json() == {"ready": True}
    assert requests.get(f"{predictor.url}/v2/models/deepguard/ready", timeout=TIMEOUT).json()["ready"] is True
    metrics = requests.get(f"{predictor.url}/metrics", timeout=TIMEOUT)
    assert metrics.status_code == 200
    assert 'request_predict_seconds_count{model_name="deepguard"}' in metrics.text


def test_one_request_of_256_images_is_one_batch(predictor, sample_images):
    files = (sample_images.probe * 16)[:256]
    response = v2_infer(predictor.url, v2_body(files))
    assert response.status_code == 200, response.text
    probabilities = outputs(response)["fake_probability"]
    assert len(probabilities) == 256
    # The same file twice gets the same score, wherever it sits in the batch.
    assert probabilities[0] == pytest.approx(probabilities[len(sample_images.probe)], abs=1e-6)


def test_default_limits_accept_256_images_and_every_file_the_web_app_takes():
    """The web app's per-file limit was a second 10 MiB beside the predictor's, checked against neither: a web
    app taking larger files would pass them on to a 400 from the predictor."""
    from flask_app import DEFAULT_MAX_UPLOAD_BYTES, MAX_BATCH_FILES

    limits = Limits()
    assert limits.max_images >= max(256, MAX_BATCH_FILES)
    assert limits.max_image_bytes >= DEFAULT_MAX_UPLOAD_BYTES >= 10 * 1024 * 1024


def test_the_default_body_limit_carries_the_web_apps_largest_upload_and_fits_the_charts_memory():
    import yaml

    from flask_app import DEFAULT_MAX_BATCH_BYTES

    body = Limits().max_request_bytes
    # The web app's largest upload, base64-encoded in one V2 request, with room for the JSON around it.
    assert body >= serving_model.base64_length(DEFAULT_MAX_BATCH_BYTES) + 64 * 1024
    # At its peak the predictor holds about four copies of a body (3.9x measured with tracemalloc): one
    # request at the limit must leave half of the chart's memory limit to the model and other requests.
    values = yaml.safe_load((REPO / "helm" / "deepguard" / "values.yaml").read_text())
    memory = values["predictor"]["resources"]["limits"]["memory"]
    assert memory.endswith("Gi")
    assert 4 * body <= int(memory.removesuffix("Gi")) * 2**30 / 2


# ---- bad input: 4xx naming the item, and the server keeps serving ------------------------------------------


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bad_item_cases(good: bytes) -> list[tuple[str, str, str]]:
    """(name, base64 item, expected words in the message) with the bad item at index 1."""
    truncated = good[: len(good) // 2]
    return [
        ("invalid base64", "@@not base64@@", "base64"),
        ("non-image", b64(b"this is plain text, not a picture"), "not an image"),
        ("truncated", b64(truncated), "truncated"),
        ("empty", "", "empty"),
        ("decompression bomb", b64(_bomb_png()), "pixels"),
        ("too large", b64(good + b"\0" * 2_100_000), "limit"),
    ]


@pytest.fixture(scope="module")
def good_file(sample_images) -> bytes:
    return sample_images.probe[0]


def _assert_still_serving(predictor, good_file: bytes) -> None:
    response = v2_infer(predictor.url, v2_body([good_file]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", range(6), ids=[c[0] for c in _bad_item_cases(b"x" * 10)])
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_bad_item_is_a_4xx_naming_it(predictor, good_file, case, protocol):
    name, item, words = _bad_item_cases(good_file)[case]
    items = [b64(good_file), item, b64(good_file)]
    if protocol == "v2":
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": items}]}
        response = v2_infer(predictor.url, body)
        where = "item 1"
    else:
        response = v1_predict(predictor.url, {"instances": [{"image": {"b64": i}} for i in items]})
        where = "instances[1]"
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    message = response.json()["error"]
    assert where in message and words in message.lower(), message
    _assert_still_serving(predictor, good_file)


def _request_cases(good: str) -> list[tuple[str, str, object, str]]:
    """(name, protocol, body, expected words) for malformed requests."""
    one = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [good]}
    return [
        ("malformed JSON v2", "v2", b'{"inputs": [', ""),
        ("malformed JSON v1", "v1", b'{"instances": [', ""),
        ("wrong input name", "v2", {"inputs": [{**one, "name": "picture"}]}, "picture"),
        ("two inputs", "v2", {"inputs": [one, one]}, "one input"),
        ("wrong datatype", "v2", {"inputs": [{**one, "datatype": "FP32", "data": [0.5]}]}, "datatype"),
        ("shape mismatch", "v2", {"inputs": [{**one, "shape": [2]}]}, "shape"),
        ("no images", "v2", {"inputs": [{**one, "shape": [0], "data": []}]}, "no images"),
        ("too many images", "v2", {"inputs": [{**one, "shape": [301], "data": [good] * 301}]}, "limit"),
        ("too many instances", "v1", {"instances": [{"image": {"b64": good}}] * 301}, "limit"),
        (
            "uint8 out of range",
            "v2",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [0, 256, 3]}]},
            "0..255",
        ),
        (
            "uint8 wrong shape",
            "v2",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 4}]},
            "shape",
        ),
        (
            "uint8 bomb",
            "v2",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 30000, 30000, 3], "data": [0]}]},
            "pixels",
        ),
        ("no instances", "v1", {"images": []}, "instances"),
        ("instance not an image", "v1", {"instances": [{"image": good}]}, "instances[0]"),
        ("instances not a list", "v1", {"instances": "x"}, "instances"),
        ("not an object", "v1", [1, 2, 3], "json object"),
        ("a JSON string", "v1", "hello", "json object"),
        ("string data", "v2", {"inputs": [{**one, "data": "abc"}]}, "data must be a list"),
        ("number data", "v2", {"inputs": [{**one, "data": 5}]}, "data must be a list"),
        ("tensor parameters a list", "v2", {"inputs": [{**one, "parameters": [1]}]}, "parameters must be"),
        ("numeric id", "v2", {"id": 5, "inputs": [one]}, "to be a string"),
        ("request parameters a list", "v2", {"parameters": [1], "inputs": [one]}, "a json object"),
        ("outputs not objects", "v2", {"inputs": [one], "outputs": ["label"]}, "outputs"),
        (
            "output parameters a list",
            "v2",
            {"inputs": [one], "outputs": [{"name": "label", "parameters": ["binary_data"]}]},
            "outputs",
        ),
        ("no inputs, 5 MB", "v2", {"image": "A" * 5_000_000}, "inputs"),
        ("1 MB input name", "v2", {"inputs": [{**one, "name": "A" * 1_000_000}]}, "one input"),
        ("1 MB datatype", "v2", {"inputs": [{**one, "datatype": "A" * 1_000_000}]}, "datatype"),
        ("input not an object", "v2", {"inputs": [1]}, "inputs[0]"),
        ("shape not a list", "v2", {"inputs": [{**one, "shape": None}]}, "shape"),
        (
            "uint8 over the request's pixels",
            "v2",
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [3, 6000, 6000, 3], "data": [0]}]},
            "pixels per request",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_request_cases("x"))), ids=[c[0] for c in _request_cases("x")])
def test_malformed_request_is_a_4xx(predictor, good_file, case):
    name, protocol, body, words = _request_cases(b64(good_file))[case]
    if isinstance(body, bytes):
        response = (v2_infer if protocol == "v2" else v1_predict)(predictor.url, body)
    else:
        response = (v2_infer if protocol == "v2" else v1_predict)(predictor.url, json.dumps(body).encode())
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    assert words in response.text.lower() if words.islower() else words in response.text, response.text
    assert len(response.content) < 1000, "the error quotes the request back"
    _assert_still_serving(predictor, good_file)


def _binary_body(size: int, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension body whose one BYTES input claims ``size`` bytes, followed by ``raw``."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return header + raw, {"inference-header-content-length": str(len(header))}


# A binary-mode CloudEvent: its attributes in ce-* headers, its data the body (KServe reads both on V1).
CLOUDEVENT_HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "client", "ce-type": "predict"}

ODD_REQUESTS = [
    # (name, path, raw body, extra headers)
    ("V1 CloudEvent without data", "/v1/models/deepguard:predict", b"", CLOUDEVENT_HEADERS),
    ("V1 explain CloudEvent without data", "/v1/models/deepguard:explain", b"", CLOUDEVENT_HEADERS),
    (
        "binary extension without inputs",
        "/v2/models/deepguard/infer",
        b'{"a": 1}',
        {"inference-header-content-length": "8"},
    ),
    (
        "binary extension bad length",
        "/v2/models/deepguard/infer",
        b'{"a": 1}',
        {"inference-header-content-length": "abc"},
    ),
    (
        "binary extension garbage",
        "/v2/models/deepguard/infer",
        b"\xff\x00garbage",
        {"inference-header-content-length": "3"},
    ),
    ("not UTF-8", "/v2/models/deepguard/infer", b"\xff\xfe{", {}),
    ("V1 explain without images", "/v1/models/deepguard:explain", b'{"instances": []}', {}),
    ("V2 version not served", "/v2/models/deepguard/versions/999999/infer", b'{"inputs": []}', {}),
    ("V1 text body", "/v1/models/deepguard:predict", b"hello", {"Content-Type": "text/plain"}),
    ("binary size past the body", "/v2/models/deepguard/infer", *_binary_body(1000, b"\x03\0\0\0abc")),
    ("binary bytes after the tensors", "/v2/models/deepguard/infer", *_binary_body(7, b"\x03\0\0\0abcEXTRA")),
    ("binary item length past its tensor", "/v2/models/deepguard/infer", *_binary_body(7, b"\xff\0\0\0abc")),
]


@pytest.mark.parametrize("case", ODD_REQUESTS, ids=[c[0] for c in ODD_REQUESTS])
def test_odd_request_is_a_4xx(predictor, good_file, case):
    name, path, body, headers = case
    response = requests.post(
        f"{predictor.url}{path}",
        data=body,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/json", **headers},
    )
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    _assert_still_serving(predictor, good_file)


def test_binary_extension_mistakes_are_named_in_the_protocols_terms(predictor, good_file):
    """A file sent as binary BYTES without its 4-byte length (a hand-written client's slip) was refused as
    "malformed inference request: error: unpack_from requires a buffer of at least 3774863619 bytes ...", and
    a header that is not a number as "ValueError: invalid literal for int() with base 10"."""
    url = f"{predictor.url}/v2/models/deepguard/infer"
    body, headers = _binary_body(len(good_file), good_file)
    response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        f"inputs[0]: the binary BYTES tensor's {len(good_file)} bytes are not elements of a 4-byte "
        "little-endian length followed by that many bytes (a file sent as it is, without its length?)"
    )
    prefixed = struct.pack("<I", len(good_file)) + good_file
    body, headers = _binary_body(len(prefixed), prefixed)
    response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    bad = {**headers, "inference-header-content-length": "abc"}
    response = requests.post(url, data=body, headers=bad, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "inference-header-content-length 'abc' is not a number of bytes"


@pytest.mark.parametrize("extra", [{}, {"ce-contenttype": "application/json"}], ids=["ce", "ce-contenttype"])
def test_a_binary_cloudevent_is_read_and_one_without_data_is_a_400(extra):
    """KServe called ``.decode`` on the event's data: None for an empty body, and already a dict when the
    ``ce-contenttype`` header had it parsed; both were 500s (AttributeError), the second for a good one."""
    from kserve.model_repository import ModelRepository

    dataplane = VersionedDataPlane(ModelRepository())
    headers = {"content-type": "application/json", **CLOUDEVENT_HEADERS, **extra}
    body, attributes = dataplane.decode(json.dumps({"instances": []}).encode(), headers)
    assert body == {"instances": []} and attributes["id"] == "1"
    with pytest.raises(InvalidInput, match="CloudEvent .* has no data"):
        dataplane.decode(b"", headers)


def test_a_binary_cloudevent_with_its_content_type_is_scored(predictor, good_file):
    headers = {**CLOUDEVENT_HEADERS, "ce-contenttype": "application/json"}
    url = f"{predictor.url}/v1/models/deepguard:predict"
    response = requests.post(url, json=v1_body([good_file]), headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in ("REAL", "FAKE")


@pytest.mark.parametrize("path", ["/v2/models/deepguard/infer", "/v1/models/deepguard:predict"])
def test_a_gzip_body_is_a_415_naming_the_encoding_not_invalid_json(predictor, good_file, path):
    body = gzip.compress(json.dumps(v2_body([good_file]) if "v2" in path else v1_body([good_file])).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = requests.post(f"{predictor.url}{path}", data=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 415, response.text
    assert response.json()["error"].startswith("Content-Encoding 'gzip' is not supported"), response.json()


def test_a_v1_json_body_sent_without_its_content_type_is_told_so(predictor, good_file):
    """``curl -d @body.json`` without ``-H`` sends a form content type; KServe passes the raw bytes on."""
    body = json.dumps({"instances": [{"image": {"b64": base64.b64encode(good_file).decode()}}]})
    response = requests.post(
        f"{predictor.url}/v1/models/deepguard:predict",
        data=body,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        "expected Content-Type: application/json, got 'application/x-www-form-urlencoded'"
    )


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"]
)
def test_a_v1_json_body_with_a_charset_is_read(content_type):
    """KServe parses a V1 body only for an exact ``application/json``; .NET and Java clients add a charset.

    Such a body reached ``preprocess`` as bytes and was refused as "expected a JSON object body".
    """
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane

    from core.modelstore import ModelMetadata

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    headers = {"content-type": content_type}
    body, _ = DataPlane(ModelRepository()).decode(json.dumps(v1_body([buffer.getvalue()])).encode(), headers)
    model = DeepGuardModel("deepguard", "unused", Limits())
    metadata = ModelMetadata(0.5, 32, "test", "test", synthetic_data=False)
    model.served = ServedModel(keras_model=None, metadata=metadata, version="1", uri="unused")
    batch = asyncio.run(model.preprocess(body, headers))
    np.testing.assert_array_equal(batch.images, [decode_for_model(buffer.getvalue(), 32)])
    model.decode_pool.shutdown()


@pytest.mark.parametrize(
    ("bands", "sent"),
    [
        ({"real_below": 0.12, "fake_above": 0.87}, (0.12, 0.87)),
        ({"real_below": EMPTY_REAL_BAND, "fake_above": 0.87}, (None, 0.87)),
        ({"real_below": 0.12, "fake_above": EMPTY_FAKE_BAND}, (0.12, None)),
        ({}, (0.5, 0.5)),  # registered before bands: the threshold decides both ways
    ],
)
def test_v2_metadata_sends_the_edges_the_verdict_uses_and_null_for_an_empty_band(bands, sent):
    """An empty band's edge lies outside [0, 1]; a client is told that the band is empty (null), not a
    number it would show as an edge. The parameters stay strict JSON."""
    from core.modelstore import ModelMetadata

    model = DeepGuardModel("deepguard", "unused", Limits())
    metadata = ModelMetadata(0.5, 32, "test", "test", synthetic_data=False, **bands)
    model.served = ServedModel(keras_model=None, metadata=metadata, version="1", uri="unused")
    parameters = model.metadata_parameters()
    assert (parameters["real_below"], parameters["fake_above"]) == sent
    json.dumps(parameters, allow_nan=False)
    model.decode_pool.shutdown()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [(["nope"], "unknown output 'nope'"), (["label", "heatmap"], "output 'heatmap' needs the parameter")],
)
def test_an_output_the_model_has_not_is_refused_before_the_work(outputs, message):
    """KServe noticed an unknown requested output only when it wrote the answer: after the images were scored,
    counted in the metrics and written to the monitoring records of a request answered 400."""
    from kserve import InferRequest
    from kserve.protocol.infer_type import InferInput, RequestedOutput

    from core.modelstore import ModelMetadata

    model = DeepGuardModel("deepguard", "unused", Limits())
    metadata = ModelMetadata(0.5, 32, "test", "test", synthetic_data=False)
    model.served = ServedModel(keras_model=None, metadata=metadata, version="1", uri="unused")
    image = InferInput("image", [1], "BYTES", ["not even base64"])
    request = InferRequest("deepguard", [image], request_outputs=[RequestedOutput(name) for name in outputs])
    with pytest.raises(InvalidInput, match=message):
        asyncio.run(model.preprocess(request))
    model.decode_pool.shutdown()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (("BYTES", [1], None), "input 'image': data must be a list, got null"),
        (("BYTES", [1], []), "input 'image': shape [1] does not match 0 items; expected [N]"),
        (("UINT8", [1, 1, 1, 3], None), "input 'image': data must be a list, got null"),
        (("UINT8", [1, 1, 1, 3], []), "input 'image': expected 3 integers, got 0 values"),
    ],
    ids=["bytes-null", "bytes-empty", "uint8-null", "uint8-empty"],
)
def test_json_data_null_or_empty_is_refused_for_what_was_sent(tensor, message):
    """JSON ``"data": null`` or ``[]`` went to KServe's binary reader: "unreadable binary data: cannot reshape
    array of size 0", for a request with no binary data, and the UINT8 input was named twice."""
    from kserve import InferRequest
    from kserve.protocol.infer_type import InferInput

    from core.modelstore import ModelMetadata

    model = DeepGuardModel("deepguard", "unused", Limits())
    metadata = ModelMetadata(0.5, 32, "test", "test", synthetic_data=False)
    model.served = ServedModel(keras_model=None, metadata=metadata, version="1", uri="unused")
    datatype, shape, data = tensor
    request = InferRequest("deepguard", [InferInput("image", shape, datatype, data)])
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(model.preprocess(request))
    assert str(refused.value).startswith(message), str(refused.value)
    assert "binary" not in str(refused.value)
    model.decode_pool.shutdown()


def test_an_empty_v2_body_is_called_empty_not_a_binary_header_problem():
    """An empty body was refused as "inference-header-content-length 0 is outside the body's 0 bytes": a
    header the client never sent."""
    from kserve.model_repository import ModelRepository

    with pytest.raises(InvalidInput, match="^empty request body"):
        VersionedDataPlane(ModelRepository()).decode_inference_request(b"", {}, "deepguard")


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("GET", "/v1/models/deepguard:predict", 405, "Method Not Allowed"),
        ("GET", "/v1/models/deepguard:explain", 405, "Method Not Allowed"),
        ("GET", "/v2/models/deepguard/infer", 405, "Method Not Allowed"),
        ("DELETE", "/v2/models/deepguard", 405, "Method Not Allowed"),
        ("GET", "/v2/models/deepguard/nothing", 404, "Not Found"),
    ],
)
def test_a_wrong_method_or_path_is_named_in_the_protocols_error(predictor, method, path, status, words):
    """FastAPI answered these ``{"detail": "Method Not Allowed"}``, not the protocol's ``{"error": ...}``;
    a GET of ``:predict`` was taken for the readiness of a model named ``deepguard:predict`` (404).
    """
    error = f"{method} {path!r}: {words}"
    response = requests.request(method, f"{predictor.url}{path}", timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error), response.json()
    if status == 405:
        allowed = response.headers["Allow"]
        assert allowed in ("POST", "GET") and response.json()["error"].endswith(f"this path takes {allowed}")


def test_an_unknown_model_is_a_404_whatever_the_body(predictor):
    # Malformed JSON: the body of a request for a model not served was parsed first, and refused 400.
    response = requests.post(f"{predictor.url}/v2/models/other/infer", data=b"{", timeout=TIMEOUT)
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "Model with name other does not exist."}


def test_versioned_v2_paths_serve_the_served_version(predictor, registered_model, good_file):
    base = f"{predictor.url}/v2/models/deepguard/versions/{registered_model.version}"
    response = requests.post(f"{base}/infer", json=v2_body([good_file]), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == registered_model.version
    assert requests.get(base, timeout=TIMEOUT).json()["versions"] == [registered_model.version]
    other = requests.get(f"{predictor.url}/v2/models/deepguard/versions/999999/ready", timeout=TIMEOUT)
    assert other.status_code == 404 and registered_model.version in other.json()["error"]


def test_unknown_model_is_a_404(predictor, good_file):
    response = requests.post(
        f"{predictor.url}/v2/models/other/infer", json=v2_body([good_file]), timeout=TIMEOUT
    )
    assert response.status_code == 404


_NOT_AN_IMAGE = f"not an image of a format read here ({ACCEPTED_FORMATS})"


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/models/deepguard:predict", v1_body([b"text"]), 400, f"instances[0]: {_NOT_AN_IMAGE}"),
        ("/v2/models/deepguard/infer", v2_body([b"text"]), 400, f"input 'image' item 0: {_NOT_AN_IMAGE}"),
        ("/v2/models/other/infer", v2_body([b"text"]), 404, "Model with name other does not exist."),
    ],
    ids=["v1-bad-image", "v2-bad-image", "v2-unknown-model"],
)
def test_a_client_error_is_one_log_line_not_an_error_with_a_traceback(predictor, path, body, status, error):
    """A bad upload is the client's mistake: KServe's status and body, logged in one INFO line.

    KServe's own handlers log every 4xx at ERROR with a traceback, which fills the log and fires alerts on
    ERROR lines.
    """
    seen = predictor.log_file.stat().st_size
    response = requests.post(f"{predictor.url}{path}", json=body, timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (status, {"error": error})
    # The handler logs before it answers, so the lines are in the file once the answer is here.
    with predictor.log_file.open() as log:
        log.seek(seen)
        lines = [line for line in log.read().splitlines() if "uvicorn.access" not in line]
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines
    assert [line for line in lines if " INFO " in line and error in line], lines


# ---- one request must never freeze the predictor ---------------------------------------------------------


def _big_png(side: int = 6000) -> bytes:
    """A plain ``side`` x ``side`` PNG: about 120 KB on the wire, 36 MP to decode."""
    return png_bytes(Image.new("RGB", (side, side), (120, 80, 40)))


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return _big_png()


def test_120_big_pngs_are_refused_by_the_pixel_budget(predictor, big_png, good_file):
    response = v2_infer(predictor.url, v2_body([big_png] * 120))
    assert response.status_code == 400, response.text
    assert "pixels per request" in response.json()["error"]
    _assert_still_serving(predictor, good_file)


def test_pixel_budget_is_checked_before_any_image_is_decoded(predictor, big_png):
    # Three headers of 36 MP (108 MP > 100 MP); the last file stops after its header. Decoding first would
    # have answered "truncated" for item 2.
    response = v2_infer(predictor.url, v2_body([big_png, big_png, big_png[:200]]))
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "pixels per request" in message and "item 2" not in message, message


def test_health_answers_while_a_big_request_decodes(predictor, big_png):
    result = {}

    def send() -> None:
        start = time.perf_counter()
        result["response"] = v2_infer(predictor.url, v2_body([big_png, big_png]))  # 72 MP: inside the budget
        result["seconds"] = time.perf_counter() - start

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive():
        start = time.perf_counter()
        assert requests.get(f"{predictor.url}/v2/health/live", timeout=TIMEOUT).status_code == 200
        latencies.append(time.perf_counter() - start)
        time.sleep(0.02)
    sender.join()
    assert result["response"].status_code == 200, result["response"].text
    # Decoding on the event loop would hold a liveness request for the whole decode.
    assert len(latencies) >= 3, (latencies, result["seconds"])
    assert max(latencies) < result["seconds"] / 2, (latencies, result["seconds"])


def test_binary_extension_bytes_request_equals_the_json_one(predictor, sample_images):
    from kserve import InferInput, InferRequest

    files = sample_images.probe[:4]
    tensor = InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    body, json_length = InferRequest(model_name="deepguard", infer_inputs=[tensor]).to_rest()
    response = requests.post(
        f"{predictor.url}/v2/models/deepguard/infer",
        data=body,
        timeout=TIMEOUT,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_length),
        },
    )
    assert response.status_code == 200, response.text
    expected = outputs(v2_infer(predictor.url, v2_body(files)))
    assert outputs(response)["label"] == expected["label"]
    np.testing.assert_allclose(outputs(response)["fake_probability"], expected["fake_probability"], atol=1e-6)


def test_binary_outputs_come_labelled_as_binary_and_read_as_the_json_ones(predictor, sample_images):
    """``binary_data_output`` answers a JSON header followed by raw tensors: it came with no Content-Type at
    all (KServe drops the JSON one), so a client could not tell it from JSON but by the header's length."""
    from kserve import InferResponse

    files = sample_images.probe[:2]
    body = {**v2_body(files), "parameters": {"binary_data_output": True}}
    response = v2_infer(predictor.url, body)
    assert response.status_code == 200, response.text
    assert response.headers.get("content-type") == "application/octet-stream"
    json_length = int(response.headers["inference-header-content-length"])
    answer = InferResponse.from_bytes(response.content, json_length)
    binary = {output.name: output.as_numpy().reshape(-1).tolist() for output in answer.outputs}
    expected = outputs(v2_infer(predictor.url, v2_body(files)))
    assert binary["label"] == expected["label"] and binary["verdict"] == expected["verdict"]
    np.testing.assert_allclose(binary["fake_probability"], expected["fake_probability"], atol=1e-6)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/deepguard/infer",
        "/v1/models/deepguard:predict",
        "/v2/models/deepguard/versions/999999/infer",
    ],
)
def test_errors_never_echo_the_body(predictor, path):
    body = json.dumps({"not_inputs": "A" * 5_000_000}).encode()
    response = requests.post(
        f"{predictor.url}{path}", data=body, timeout=TIMEOUT, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.status_code
    assert len(response.content) < 1000, response.content[:300]


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks the outgoing address
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_predictor_listens_on_loopback_only_by_default(predictor):
    address = _non_loopback_address()
    if address is None:
        pytest.skip(on_this_machine("no non-loopback IPv4 address to try"))
    port = int(predictor.url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex((address, port)) != 0, f"the predictor answers on {address}:{port}"


def test_concurrent_single_image_requests_get_their_own_answers(predictor, sample_images, in_process):
    files = sample_images.probe
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda f: v2_infer(predictor.url, v2_body([f])), files * 3))
    expected_probabilities, expected_labels = reference(in_process, files * 3)
    got = [outputs(r)["fake_probability"][0] for r in responses]
    np.testing.assert_allclose(got, expected_probabilities, atol=1e-5, rtol=0)
    assert [outputs(r)["label"][0] for r in responses] == expected_labels


class _CountingModel:
    """A ServedModel stand-in for the batcher: records each call's batch; P(FAKE) = first pixel / 255."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def score(self, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        time.sleep(0.02)  # a model call takes a while: requests arriving meanwhile are batched
        self.batches.append(len(images))
        first = images[:, 0, 0, 0]
        return first.astype(np.float32) / 255, [str(value) for value in first]


def test_micro_batcher_batches_concurrent_requests_and_keeps_versions_apart():
    old, new = _CountingModel(), _CountingModel()
    # A reload lands after the 30th request: later ones are scored by the new version, never with the old.
    requests_ = [
        (old if i < 30 else new, np.full((1 + i % 3, 2, 2, 3), i, dtype=np.uint8)) for i in range(40)
    ]

    async def score_all() -> tuple[list, int]:
        batcher = MicroBatcher(max_images=16)
        results = await asyncio.gather(*(batcher.score(served, images) for served, images in requests_))
        return results, batcher.calls

    results, calls = asyncio.run(score_all())
    for i, ((_, images), (probabilities, labels)) in enumerate(zip(requests_, results, strict=True)):
        assert labels == [str(i)] * len(images)
        np.testing.assert_allclose(probabilities, i / 255)
    assert calls <= 10, calls  # 79 images: batched, not one call per request
    assert max(old.batches + new.batches) <= 16
    assert sum(old.batches) == sum(len(images) for served, images in requests_ if served is old)
    assert sum(new.batches) == sum(len(images) for served, images in requests_ if served is new)


class _FailingModel(_CountingModel):
    def score(self, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        time.sleep(0.02)
        raise RuntimeError("the model failed")


def test_a_failed_model_call_fails_its_requests_and_the_batcher_goes_on():
    good, bad = _CountingModel(), _FailingModel()
    images = np.full((1, 2, 2, 3), 7, dtype=np.uint8)

    async def score_all() -> list:
        batcher = MicroBatcher(max_images=16)
        first = await asyncio.gather(
            batcher.score(good, images),  # in flight when the others arrive
            *(batcher.score(bad, images) for _ in range(3)),  # one call, which fails
            return_exceptions=True,
        )
        return [*first, await batcher.score(good, images)]  # the batcher is idle again

    results = asyncio.run(asyncio.wait_for(score_all(), timeout=TIMEOUT))  # a stuck batcher: TimeoutError
    assert [type(r).__name__ for r in results] == ["tuple", *["RuntimeError"] * 3, "tuple"]
    assert good.batches == [1, 1]


class _RecordingPool(ThreadPoolExecutor):
    """A decode pool that counts the jobs handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs = 0

    def submit(self, *args, **kwargs):
        self.jobs += 1
        return super().submit(*args, **kwargs)


def _flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "in_pool"),
    [
        pytest.param(lambda jpeg: [jpeg], False, id="one-small-file-in-place"),
        pytest.param(lambda jpeg: [jpeg] * serving_model.INLINE_MAX_FILES, False, id="a-few-small-files"),
        pytest.param(lambda jpeg: [jpeg] * (serving_model.INLINE_MAX_FILES + 1), True, id="more-files"),
        # A few kilobytes of PNG whose header claims 4 megapixels: decoding it would hold the event loop.
        pytest.param(lambda jpeg: [_flat_png(2000, 2000)], True, id="small-file-claiming-many-pixels"),
    ],
)
@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_few_small_files_are_decoded_in_place_the_rest_in_the_pool(sample_images, files, in_pool, protocol):
    """The decode pool is skipped only for requests that cost less than the trip to it; results are alike."""
    from kserve import InferRequest
    from kserve.protocol.infer_type import InferInput

    from core.modelstore import ModelMetadata

    uploads = files(sample_images.probe[0])
    model = DeepGuardModel("deepguard", "unused", Limits())
    model.decode_pool = pool = _RecordingPool()
    metadata = ModelMetadata(0.5, 32, "test", "test", synthetic_data=True)
    model.served = ServedModel(keras_model=None, metadata=metadata, version="1", uri="unused")
    if protocol == "v1":
        payload = v1_body(uploads)
    else:
        data = [b64(f) for f in uploads]
        payload = InferRequest("deepguard", [InferInput("image", [len(data)], "BYTES", data)])
    batch = asyncio.run(model.preprocess(payload))
    assert (pool.jobs > 0) is in_pool
    expected = np.stack([decode_for_model(f, 32) for f in uploads])
    np.testing.assert_array_equal(batch.images, expected)
    # Decoded in place, the statistics are left to predict, which computes them while the model scores.
    assert (batch.stats is not None) is in_pool
    scores = asyncio.run(model.predict(dataclasses.replace(batch, served=_CountingModel())))
    np.testing.assert_allclose(scores.batch.stats["hf_energy"], image_statistics(expected)["hf_energy"])
    np.testing.assert_allclose(scores.probabilities, expected[:, 0, 0, 0] / 255)
    pool.shutdown()


def test_a_refusal_quoting_the_clients_words_is_one_log_line(predictor):
    """The unknown model's name, from the URL, went into the refusal's log line as it came: a %0A in it
    started a line of the client's choosing, and an ESC byte drove the terminal of whoever tailed the log."""
    forged = "2026-12-07 00:00:00,000 ERROR serving.server: forged"
    path = f"/v2/models/x%0A{forged.replace(' ', '%20')}%1B[2J/infer"
    response = requests.post(f"{predictor.url}{path}", json={"inputs": []}, timeout=TIMEOUT)
    assert response.status_code == 404, response.text
    deadline = time.monotonic() + 10
    while "forged" not in (log := predictor.log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The access line has the path percent-encoded, as sent; the refusal's line is the one to check.
    lines = [line for line in log.splitlines() if "forged" in line and "uvicorn.access" not in line]
    assert len(lines) == 1, lines
    assert "answered 404: Model with name x\\n2026-12-07" in lines[0] and "\\x1b[2J" in lines[0], lines
    assert "\x1b" not in log


def test_the_log_has_no_line_per_request_but_the_access_line(predictor):
    """KServe's per-request timing lines are off by default, and no warning repeats once per request.

    Runs after the requests above. Decoding once swapped the process's warning filters on every image, which
    made a library's one-time deprecation warning print on every request.
    """
    log = predictor.log_file.read_text()
    requests_served = log.count("uvicorn.access")
    assert requests_served > 50, "too few requests to check"
    assert log.count("kserve.trace") == 0
    assert log.count("Warning") <= 5, [line for line in log.splitlines() if "Warning" in line][:5]


def test_no_5xx_was_answered(predictor):
    """Runs last in this file: nothing a client sent above made the server fail."""
    access = [line for line in predictor.log_file.read_text().splitlines() if "uvicorn.access" in line]
    assert access, "no access log lines: cannot check"
    errors = [line for line in access if line.rstrip().split(" ")[-1].startswith("5")]
    assert errors == []
