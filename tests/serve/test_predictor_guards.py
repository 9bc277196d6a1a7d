"""A predictor started as the chart starts it (--no-reload), with a small body limit: 413s, no reload."""

from __future__ import annotations

import asyncio
import base64
import json
import tracemalloc
from collections.abc import Iterator

import grpc
import pytest
import requests
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from serving.server import BodyLimitMiddleware, ContentEncodingMiddleware

from .serving_helpers import Server, free_port, start_predictor

TIMEOUT = 60
BODY_LIMIT = 1_000_000
JSON_VALUES_LIMIT = 10_000  # three 32x32 RGB images as JSON numbers fit, four do not


GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def guarded(registered_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_file = tmp_path_factory.mktemp("guarded") / "predictor.log"
    manager, url = start_predictor(
        registered_model,
        log_file,
        "--no-reload",
        "--max-request-bytes",
        str(BODY_LIMIT),
        *("--max-json-values", str(JSON_VALUES_LIMIT)),
        *("--enable_grpc", "true", "--grpc_port", str(GRPC_PORT)),
    )
    with manager as process:
        yield Server(url, process, log_file)


def _body(files: list[bytes]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(files)],
                    "data": [base64.b64encode(f).decode() for f in files],
                }
            ]
        }
    ).encode()


def _post(url: str, data: object) -> requests.Response:
    return requests.post(
        f"{url}/v2/models/deepguard/infer",
        data=data,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/json"},
    )


def test_body_within_the_limit_is_served(guarded, sample_images):
    body = _body(sample_images.probe)
    assert len(body) < BODY_LIMIT
    response = _post(guarded.url, body)
    assert response.status_code == 200, response.text


def test_declared_body_over_the_limit_is_a_413(guarded, sample_images):
    body = _body(sample_images.probe * 600)
    assert len(body) > BODY_LIMIT
    response = _post(guarded.url, body)
    assert response.status_code == 413, response.text
    assert f"limit of {BODY_LIMIT} bytes" in response.json()["error"]


def test_chunked_body_over_the_limit_is_a_413(guarded, sample_images):
    body = _body(sample_images.probe * 600)
    # A generator makes requests send it chunked, without a Content-Length to refuse up front.
    response = _post(guarded.url, (body[i : i + 65536] for i in range(0, len(body), 65536)))
    assert response.status_code == 413, response.text
    assert _post(guarded.url, _body(sample_images.probe[:1])).status_code == 200


def _pixels_request(count: int, binary: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """A V2 UINT8 tensor of ``count`` 32x32 images: JSON numbers, or ``binary`` after the JSON header."""
    tensor = {"name": "image", "datatype": "UINT8", "shape": [count, 32, 32, 3]}
    if binary is None:
        return json.dumps({"inputs": [{**tensor, "data": [7] * (count * 32 * 32 * 3)}]}).encode(), {}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(binary)}}]}).encode()
    return header + binary, {"Inference-Header-Content-Length": str(len(header))}


def test_json_of_more_values_than_the_limit_is_a_413_before_parsing(guarded):
    """A JSON number costs the predictor ~14 times the bytes it takes to send: a 200 MB body of them, within
    the body limit, took it past the chart's 4 GiB and held the event loop 34 s. The values are counted
    before parsing; the same pixels in the binary extension (bytes a JSON scan would miscount) are served."""
    body, _ = _pixels_request(4)
    assert len(body) < BODY_LIMIT
    refused = _post(guarded.url, body)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert f"limit of {JSON_VALUES_LIMIT} values" in error and "binary extension" in error
    assert _post(guarded.url, _pixels_request(3)[0]).status_code == 200
    body, headers = _pixels_request(4, binary=b"," * (4 * 32 * 32 * 3))
    served = requests.post(
        f"{guarded.url}/v2/models/deepguard/infer",
        data=body,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/octet-stream", **headers},
    )
    assert served.status_code == 200, served.text


def test_reload_endpoint_is_closed(guarded, registered_model):
    for action in ("load", "unload"):
        response = requests.post(f"{guarded.url}/v2/repository/models/deepguard/{action}", timeout=TIMEOUT)
        assert response.status_code == 403, response.text
        assert "--no-reload" in response.json()["error"]
    served = requests.get(f"{guarded.url}/v2/models/deepguard", timeout=TIMEOUT).json()
    assert served["versions"] == [registered_model.version]


def test_reload_is_closed_over_grpc_too(guarded, registered_model):
    """KServe's gRPC servicer has its own RepositoryModelLoad/Unload; an unload took the model down."""
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="deepguard")),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="deepguard")),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--no-reload" in refused.value.details()
    assert requests.get(f"{guarded.url}/v2/models/deepguard/ready", timeout=TIMEOUT).status_code == 200
    assert "reloaded" not in guarded.log_file.read_text()


@pytest.mark.parametrize("argv", [["--model-threads", "0"], ["--workers", "2"]])
def test_settings_the_predictor_cannot_serve_with_are_refused(argv, capsys):
    from serving.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_body_is_held_once_while_the_request_is_served():
    """The guard reads the body in chunks and hands it on joined; it kept the chunks too, a second copy of
    the body for the whole request (a 559 MB V2 body raised the predictor's peak memory by 4.9 times its
    size, 3.9 times without the copy)."""
    chunk, chunks = 1024 * 1024, 8
    sent, held = [0], {}

    async def receive() -> dict:
        sent[0] += 1
        return {"type": "http.request", "body": bytes(chunk), "more_body": sent[0] < chunks}

    async def app(scope: dict, receive, send) -> None:
        assert len((await receive())["body"]) == chunks * chunk
        held["bytes"] = tracemalloc.get_traced_memory()[0] - held["start"]

    async def serve() -> None:
        held["start"] = tracemalloc.get_traced_memory()[0]
        await BodyLimitMiddleware(app, 10 * chunks * chunk)({"type": "http", "headers": []}, receive, None)

    tracemalloc.start()
    try:
        asyncio.run(serve())
    finally:
        tracemalloc.stop()
    assert held["bytes"] < 1.5 * chunks * chunk


@pytest.mark.parametrize(
    ("method", "encoding", "status"),
    [
        ("POST", b"gzip", 415),
        ("POST", b"GZIP, br", 415),
        ("POST", b"identity", 200),
        ("POST", None, 200),
        ("GET", b"gzip", 200),  # no body to decode: a probe is never refused for a header
    ],
)
def test_a_compressed_body_is_a_415_naming_the_encoding(method, encoding, status):
    """A gzip body reached the JSON parser as sent: "invalid JSON: unexpected character", no word of gzip."""
    answered: list[dict] = []

    async def app(scope: dict, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        answered.append(message)

    headers = [(b"content-encoding", encoding)] if encoding is not None else []
    scope = {"type": "http", "method": method, "path": "/v2/models/deepguard/infer", "headers": headers}
    asyncio.run(ContentEncodingMiddleware(app)(scope, receive, send))
    assert answered[0]["status"] == status
    if status == 415:
        error = json.loads(answered[1]["body"])["error"]
        assert error.startswith(f"Content-Encoding {encoding.decode()!r} is not supported"), error
