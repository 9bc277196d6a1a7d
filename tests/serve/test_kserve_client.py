"""KServe's own Python clients (REST, gRPC, the gRPC stub) against the real predictor, as documented."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import requests
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    InferResponse,
    RESTConfig,
)
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import RequestedOutput

from .monitoring_helpers import own_store
from .serving_helpers import SampleImages, free_port, start_predictor

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
TIMEOUT = 60
OUTPUTS = ["fake_probability", "label", "verdict", "note", "input_size", "input_format"]


@dataclass(frozen=True)
class Predictor:
    url: str
    grpc_address: str
    version: str


@pytest.fixture(scope="module")
def predictor_with_grpc(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    """The tiny model in its own MLflow store, served over HTTP and (opt-in) gRPC."""
    root = tmp_path_factory.mktemp("kserve-client")
    registered = own_store(tiny_model, root)
    grpc_port = free_port()
    manager, url = start_predictor(
        registered, root / "predictor.log", "--enable_grpc", "true", "--grpc_port", str(grpc_port)
    )
    with manager:
        address = f"127.0.0.1:{grpc_port}"
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        yield Predictor(url, address, registered.version)


def files_input(files: list[bytes], *, binary: bool) -> InferInput:
    """The ``image`` input as KServe's docs build it: the files raw (binary extension) or base64 text."""
    image = InferInput("image", [len(files)], "BYTES")
    data = files if binary else [base64.b64encode(f) for f in files]
    image.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    return image


def values(response: InferResponse) -> dict[str, list]:
    """Output name -> values, BYTES decoded to text (gRPC gives bytes, JSON text)."""
    return {
        output.name: [v.decode() if isinstance(v, bytes) else v for v in output.as_numpy().tolist()]
        for output in response.outputs
    }


def test_rest_client_health_metadata_infer_and_v1(
    predictor_with_grpc: Predictor, sample_images: SampleImages
):
    url, files = predictor_with_grpc.url, sample_images.probe[:2]

    async def calls() -> dict:
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT))
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=TIMEOUT))
        try:
            requested = [
                RequestedOutput("verdict", {"binary_data": True}),
                RequestedOutput("fake_probability"),
            ]
            return {
                "health": [
                    await v2.is_server_live(url),
                    await v2.is_server_ready(url),
                    await v2.is_model_ready(url, "deepguard"),
                    await v2.is_model_ready(url, "nope"),
                    await v1.is_server_live(url),
                    await v1.is_model_ready(url, "deepguard"),
                ],
                "json": await v2.infer(
                    url,
                    InferRequest("deepguard", [files_input(files, binary=False)], "req-json"),
                    "deepguard",
                ),
                "binary": await v2.infer(
                    url, InferRequest("deepguard", [files_input(files, binary=True)], "req-bin"), "deepguard"
                ),
                "binary_output": await v2.infer(
                    url,
                    InferRequest(
                        "deepguard",
                        [files_input(files, binary=False)],
                        "req-out",
                        parameters={"binary_data_output": True},
                    ),
                    "deepguard",
                ),
                "requested": await v2.infer(
                    url,
                    InferRequest(
                        "deepguard", [files_input(files, binary=True)], "req-req", request_outputs=requested
                    ),
                    "deepguard",
                ),
                "v1": await v1.infer(
                    url,
                    {"instances": [{"image": {"b64": base64.b64encode(f).decode()}} for f in files]},
                    "deepguard",
                ),
                "explain": await v1.explain(
                    url, "deepguard", {"instances": [{"image": {"b64": base64.b64encode(files[0]).decode()}}]}
                ),
            }
        finally:
            await v2.close()
            await v1.close()

    answers = asyncio.run(calls())
    assert answers["health"] == [True, True, True, False, True, True]
    reference = values(answers["json"])
    assert answers["json"].id == "req-json"
    assert list(reference) == OUTPUTS
    assert len(reference["fake_probability"]) == 2 and set(reference["label"]) <= {"REAL", "FAKE"}
    for key in ("binary", "binary_output"):
        assert values(answers[key]) == reference, key
    assert (answers["binary"].id, answers["binary_output"].id) == ("req-bin", "req-out")
    assert answers["requested"].id == "req-req"
    assert values(answers["requested"]) == {k: reference[k] for k in ("verdict", "fake_probability")}
    v1 = answers["v1"]["predictions"]
    assert [p["fake_probability"] for p in v1] == pytest.approx(reference["fake_probability"], abs=1e-6)
    heatmap = np.asarray(answers["explain"]["explanations"][0]["heatmap"])
    assert heatmap.shape == (32, 32)


def test_rest_client_refusals_raise_with_the_servers_message(
    predictor_with_grpc: Predictor, sample_images: SampleImages
):
    url = predictor_with_grpc.url

    async def refusal(data: InferRequest | dict, model: str = "deepguard") -> httpx.HTTPStatusError:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT))
        try:
            with pytest.raises(httpx.HTTPStatusError) as caught:
                await client.infer(url, data, model)
            return caught.value
        finally:
            await client.close()

    truncated = files_input([sample_images.probe[0][:200]], binary=True)
    error = asyncio.run(refusal(InferRequest("deepguard", [truncated])))
    assert error.response.status_code == 400
    refused = "input 'image' item 0: corrupt or truncated image.*, '400 Bad Request' for url .*"
    assert re.fullmatch(refused, str(error))
    unknown = asyncio.run(
        refusal(InferRequest("nope", [files_input(sample_images.probe[:1], binary=True)]), "nope")
    )
    assert unknown.response.status_code == 404 and "nope" in str(unknown)


def test_grpc_client_health_infer_and_refusals(predictor_with_grpc: Predictor, sample_images: SampleImages):
    async def calls() -> dict:
        client = InferenceGRPCClient(predictor_with_grpc.grpc_address, timeout=TIMEOUT)
        try:
            # set_data_from_numpy puts BYTES in raw_input_contents, KServe's default over gRPC.
            image = InferInput("image", [2], "BYTES")
            image.set_data_from_numpy(np.array(sample_images.probe[:2], dtype=object))
            answers = {
                "health": [
                    await client.is_server_live(),
                    await client.is_server_ready(),
                    await client.is_model_ready("deepguard"),
                ],
                "infer": await client.infer(InferRequest("deepguard", [image], "grpc-1")),
                "requested": await client.infer(
                    InferRequest("deepguard", [image], "grpc-2", request_outputs=[RequestedOutput("label")])
                ),
            }
            bad = InferInput("image", [1], "BYTES")
            bad.set_data_from_numpy(np.array([sample_images.probe[0][:200]], dtype=object))
            for key, request in (
                ("bad", InferRequest("deepguard", [bad])),
                ("unknown", InferRequest("nope", [bad])),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.infer(request)
                answers[key] = (caught.value.code(), caught.value.details())
            return answers
        finally:
            await client.close()

    answers = asyncio.run(calls())
    assert answers["health"] == [True, True, True]
    assert answers["infer"].id == "grpc-1" and list(values(answers["infer"])) == OUTPUTS
    assert answers["requested"].id == "grpc-2"
    assert values(answers["requested"]) == {"label": values(answers["infer"])["label"]}
    assert answers["bad"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert answers["bad"][1].startswith("input 'image' item 0: corrupt or truncated image")
    assert answers["unknown"][0] == grpc.StatusCode.NOT_FOUND


def test_grpc_model_metadata_names_the_served_version_as_http_does(predictor_with_grpc: Predictor):
    # KServe's servicer dropped `versions`: a gRPC client could not tell which version answers.
    http = requests.get(f"{predictor_with_grpc.url}/v2/models/deepguard", timeout=TIMEOUT).json()
    with grpc.insecure_channel(predictor_with_grpc.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="deepguard"), timeout=TIMEOUT)
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT)
    assert list(metadata.versions) == http["versions"] == [predictor_with_grpc.version]
    assert metadata.name == "deepguard" and metadata.platform == http["platform"]
    tensors = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.outputs]
    assert tensors == http["outputs"]
    assert [t.name for t in metadata.inputs] == [t["name"] for t in http["inputs"]] == ["image"]
    assert server.name == "kserve" and server.version


def test_grpc_pinned_version_is_answered_by_it_or_refused_as_over_http(
    predictor_with_grpc: Predictor, sample_images: SampleImages
):
    # KServe's servicer ignored a request's version: pinning version 9 got version 1's answer (HTTP: 404).
    served, other = predictor_with_grpc.version, str(int(predictor_with_grpc.version) + 8)
    refused = requests.get(
        f"{predictor_with_grpc.url}/v2/models/deepguard/versions/{other}/ready", timeout=TIMEOUT
    )
    assert refused.status_code == 404

    async def infer(version: str) -> InferResponse | tuple[grpc.StatusCode, str]:
        client = InferenceGRPCClient(predictor_with_grpc.grpc_address, timeout=TIMEOUT)
        image = InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array(sample_images.probe[:1], dtype=object))
        try:
            return await client.infer(InferRequest("deepguard", [image], model_version=version))
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details()
        finally:
            await client.close()

    assert asyncio.run(infer(served)).model_version == served
    assert asyncio.run(infer(other)) == (grpc.StatusCode.NOT_FOUND, refused.json()["error"])
    with grpc.insecure_channel(predictor_with_grpc.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="deepguard", version=served), timeout=TIMEOUT).ready
        for call, request in (
            (stub.ModelReady, pb.ModelReadyRequest(name="deepguard", version=other)),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="deepguard", version=other)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=TIMEOUT)
            assert (caught.value.code(), caught.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                refused.json()["error"],
            )


def python_block(marker: str) -> str:
    """The ```python block of docs/serving.md that contains ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


@pytest.mark.parametrize(
    ("marker", "documented_address"),
    [("InferenceRESTClient", "http://localhost:8080"), ("GRPCInferenceServiceStub", "localhost:8081")],
)
def test_the_documented_python_clients_run_as_pasted(
    predictor_with_grpc: Predictor,
    sample_images: SampleImages,
    tmp_path: Path,
    marker: str,
    documented_address: str,
):
    block = python_block(marker)
    assert documented_address in block
    address = (
        predictor_with_grpc.url if documented_address.startswith("http") else predictor_with_grpc.grpc_address
    )
    (tmp_path / "photo.jpg").write_bytes(sample_images.probe[0])
    result = subprocess.run(
        [sys.executable, "-c", block.replace(documented_address, address)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert "'fake_probability': [0." in printed and "'verdict': [" in printed
    if marker == "InferenceRESTClient":
        assert printed.startswith("photo-1 {")
