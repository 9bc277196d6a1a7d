"""The KServe predictor over real HTTP: V1 and V2 round trips, one preprocessing, metadata, and bad inputs."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from stages.imaging import decode_for_model
from stages.labels import decide, names
from stages.modelstore import download_model, load_model_dir, predict_fake_probability
from stages.predictor import Limits

TIMEOUT = 60


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def v2_body(files: list[bytes]) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                        "data": [b64(f) for f in files]}]}


def v1_body(files: list[bytes]) -> dict:
    return {"instances": [{"image": {"b64": b64(f)}} for f in files]}


def v2_infer(url: str, body: dict | bytes, **kwargs) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(f"{url}/v2/models/deepguard/infer", data=body, timeout=TIMEOUT,
                             headers={"Content-Type": "application/json"}, **kwargs)
    return requests.post(f"{url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT, **kwargs)


def v1_predict(url: str, body: dict | bytes) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(f"{url}/v1/models/deepguard:predict", data=body, timeout=TIMEOUT,
                             headers={"Content-Type": "application/json"})
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
    return [png_bytes(rgba), gif.getvalue(), webp.getvalue(), png_bytes(gray.convert("RGB").resize((7, 5)))]


def test_v2_round_trip_matches_the_in_process_model(predictor, registered_model, sample_images, in_process):
    files = sample_images.probe + odd_images()
    response = v2_infer(predictor.url, v2_body(files))
    assert response.status_code == 200, response.text
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
    assert set(predictions[0]) == {"label", "fake_probability"}
    expected_probabilities, expected_labels = reference(in_process, files)
    got = [p["fake_probability"] for p in predictions]
    np.testing.assert_allclose(got, expected_probabilities, atol=1e-5, rtol=0)
    assert [p["label"] for p in predictions] == expected_labels


def test_v2_uint8_tensor_equals_the_encoded_file_route(predictor, sample_images, in_process):
    files = sample_images.probe[:4]
    pixels = np.stack([decode_for_model(f, 32) for f in files])
    big = np.stack([np.asarray(Image.fromarray(p).resize((40, 40))) for p in pixels])  # resized on the server
    for tensor in (pixels, big):
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(tensor.shape),
                            "data": tensor.reshape(-1).tolist()}]}
        response = v2_infer(predictor.url, body)
        assert response.status_code == 200, response.text
        if tensor is pixels:
            expected, _ = reference(in_process, files)
        else:
            expected = predict_fake_probability(in_process[0], np.stack(
                [decode_for_model(png_bytes(Image.fromarray(p)), 32) for p in big]))
        np.testing.assert_allclose(outputs(response)["fake_probability"], expected, atol=1e-5, rtol=0)


def test_metadata_health_and_metrics(predictor, registered_model):
    metadata = requests.get(f"{predictor.url}/v2/models/deepguard", timeout=TIMEOUT)
    assert metadata.status_code == 200
    body = metadata.json()
    assert body["versions"] == [registered_model.version]
    assert [tensor["name"] for tensor in body["inputs"]] == ["image"]
    assert [tensor["name"] for tensor in body["outputs"]] == ["fake_probability", "label"]
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


def test_default_limits_accept_256_images_of_10_megabytes():
    limits = Limits()
    assert limits.max_images >= 256
    assert limits.max_image_bytes >= 10 * 1024 * 1024


# ---- bad input: 4xx naming the item, and the server keeps serving ------------------------------------------

def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


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
        ("uint8 out of range", "v2", {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 3],
                                                  "data": [0, 256, 3]}]}, "0..255"),
        ("uint8 wrong shape", "v2", {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2],
                                                 "data": [0] * 4}]}, "shape"),
        ("uint8 bomb", "v2", {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 30000, 30000, 3],
                                          "data": [0]}]}, "pixels"),
        ("no instances", "v1", {"images": []}, "instances"),
        ("instance not an image", "v1", {"instances": [{"image": good}]}, "instances[0]"),
        ("instances not a list", "v1", {"instances": "x"}, "instances"),
        ("not an object", "v1", [1, 2, 3], "json object"),
        ("string data", "v2", {"inputs": [{**one, "data": "abc"}]}, ""),
    ]


@pytest.mark.parametrize("case", range(17), ids=[c[0] for c in _request_cases("x")])
def test_malformed_request_is_a_4xx(predictor, good_file, case):
    name, protocol, body, words = _request_cases(b64(good_file))[case]
    if isinstance(body, bytes):
        response = (v2_infer if protocol == "v2" else v1_predict)(predictor.url, body)
    else:
        response = (v2_infer if protocol == "v2" else v1_predict)(predictor.url, json.dumps(body).encode())
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    assert words in response.text.lower() if words.islower() else words in response.text, response.text
    _assert_still_serving(predictor, good_file)


ODD_REQUESTS = [
    # (name, path, raw body, extra headers)
    ("binary extension without inputs", "/v2/models/deepguard/infer", b'{"a": 1}',
     {"inference-header-content-length": "8"}),
    ("binary extension bad length", "/v2/models/deepguard/infer", b'{"a": 1}',
     {"inference-header-content-length": "abc"}),
    ("binary extension garbage", "/v2/models/deepguard/infer", b"\xff\x00garbage",
     {"inference-header-content-length": "3"}),
    ("not UTF-8", "/v2/models/deepguard/infer", b"\xff\xfe{", {}),
    ("V1 explain (no explainer)", "/v1/models/deepguard:explain", b'{"instances": []}', {}),
    ("V2 version not served", "/v2/models/deepguard/versions/999999/infer", b'{"inputs": []}', {}),
    ("V1 text body", "/v1/models/deepguard:predict", b"hello", {"Content-Type": "text/plain"}),
]


@pytest.mark.parametrize("case", ODD_REQUESTS, ids=[c[0] for c in ODD_REQUESTS])
def test_odd_request_is_a_4xx(predictor, good_file, case):
    name, path, body, headers = case
    response = requests.post(f"{predictor.url}{path}", data=body, timeout=TIMEOUT,
                             headers={"Content-Type": "application/json", **headers})
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    _assert_still_serving(predictor, good_file)


def test_versioned_v2_paths_serve_the_served_version(predictor, registered_model, good_file):
    base = f"{predictor.url}/v2/models/deepguard/versions/{registered_model.version}"
    response = requests.post(f"{base}/infer", json=v2_body([good_file]), timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == registered_model.version
    assert requests.get(base, timeout=TIMEOUT).json()["versions"] == [registered_model.version]
    other = requests.get(f"{predictor.url}/v2/models/deepguard/versions/999999/ready", timeout=TIMEOUT)
    assert other.status_code == 404 and registered_model.version in other.json()["error"]


def test_unknown_model_is_a_404(predictor, good_file):
    response = requests.post(f"{predictor.url}/v2/models/other/infer", json=v2_body([good_file]),
                             timeout=TIMEOUT)
    assert response.status_code == 404


def test_no_5xx_was_answered(predictor):
    """Runs last in this file: nothing a client sent above made the server fail."""
    access = [line for line in predictor.log_file.read_text().splitlines() if "uvicorn.access" in line]
    assert access, "no access log lines: cannot check"
    errors = [line for line in access if line.rstrip().split(" ")[-1].startswith("5")]
    assert errors == []
