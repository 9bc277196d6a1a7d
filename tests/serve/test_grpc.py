"""V2 over gRPC (`--enable_grpc true`): the answers and refusals of V2 over HTTP; off unless asked for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from kserve import InferInput, InferRequest, InferResponse
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from core.imaging import decode_for_model

from .serving_helpers import free_port, start_predictor
from .test_predictor import odd_images, v2_body

TIMEOUT = 60


@pytest.fixture(scope="module")
def grpc_predictor(
    registered_model, tmp_path_factory
) -> Iterator[tuple[pb_grpc.GRPCInferenceServiceStub, str, Path]]:
    """A second predictor of the same champion with the opt-in settings on (gRPC, KServe's latency lines): its
    stub, its HTTP URL and its log file."""
    log_file = tmp_path_factory.mktemp("grpc-predictor") / "predictor.log"
    port = free_port()
    manager, url = start_predictor(
        registered_model,
        log_file,
        "--enable_grpc",
        "true",
        "--grpc_port",
        str(port),
        "--enable_latency_logging",
        "true",
    )
    with manager, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        yield pb_grpc.GRPCInferenceServiceStub(channel), url, log_file


def infer_request(files: list[bytes], name: str = "image", **parameters: bool) -> pb.ModelInferRequest:
    """A V2 gRPC request with the image files themselves (not base64) as a BYTES input."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype="BYTES", shape=[len(files)], contents=pb.InferTensorContents(bytes_contents=files)
    )
    return pb.ModelInferRequest(
        model_name="deepguard",
        inputs=[tensor],
        parameters={key: pb.InferParameter(bool_param=value) for key, value in parameters.items()},
    )


def answer(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> InferResponse:
    return InferResponse.from_grpc(stub.ModelInfer(request, timeout=TIMEOUT))


def values(response: InferResponse) -> dict[str, list]:
    """Output name -> values, BYTES decoded to text."""
    return {
        output.name: [v.decode() if isinstance(v, bytes) else v for v in output.as_numpy().tolist()]
        for output in response.outputs
    }


def test_grpc_answers_exactly_what_http_answers(grpc_predictor, predictor, registered_model, sample_images):
    stub, _, log_file = grpc_predictor
    files = sample_images.probe + odd_images()
    http = requests.post(f"{predictor.url}/v2/models/deepguard/infer", json=v2_body(files), timeout=TIMEOUT)
    assert http.status_code == 200, http.text
    expected = {output["name"]: output["data"] for output in http.json()["outputs"]}

    response = answer(stub, infer_request(files))
    got = values(response)
    assert set(got) == set(expected)
    np.testing.assert_allclose(got.pop("fake_probability"), expected.pop("fake_probability"), atol=1e-6)
    input_size = np.asarray(got.pop("input_size")).ravel().tolist()
    assert input_size == expected.pop("input_size")
    assert got == expected  # label, verdict, note, input_format
    assert response.model_version == registered_model.version
    # gRPC parameters hold bool, int64 or string: the threshold travels as text.
    facts = {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in response.parameters.items()
    }
    assert float(facts.pop("threshold")) == http.json()["parameters"]["threshold"]
    assert facts == {key: v for key, v in http.json()["parameters"].items() if key != "threshold"}
    assert "V2 over gRPC on port" in log_file.read_text()


def test_grpc_request_built_by_kserves_client_is_scored(grpc_predictor, sample_images):
    """KServe's ``InferInput.set_data_from_numpy`` sends the tensor in ``raw_input_contents`` by default."""
    stub, _, _ = grpc_predictor
    files = sample_images.probe[:3]
    expected = values(answer(stub, infer_request(files)))["fake_probability"]
    encoded = InferInput("image", [len(files)], "BYTES")
    encoded.set_data_from_numpy(np.array(files, dtype=np.object_))
    pixels = InferInput("image", [len(files), 32, 32, 3], "UINT8")
    pixels.set_data_from_numpy(np.stack([decode_for_model(f, 32) for f in files]))
    for tensor in (encoded, pixels):
        request = InferRequest("deepguard", infer_inputs=[tensor], request_id="raw").to_grpc()
        assert request.raw_input_contents, "the client's default is binary data"
        got = values(answer(stub, request))["fake_probability"]
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_latency_logging_true_brings_kserve_timing_lines_back(grpc_predictor, sample_images):
    """Off by default (no line per request, test_predictor.py), KServe's latency and timing lines come back
    when asked for."""
    _, url, log_file = grpc_predictor
    http = requests.post(
        f"{url}/v2/models/deepguard/infer", json=v2_body(sample_images.probe[:1]), timeout=TIMEOUT
    )
    assert http.status_code == 200, http.text

    def trace_lines() -> list[str]:
        return [line for line in log_file.read_text().splitlines() if "kserve.trace" in line]

    deadline = time.monotonic() + TIMEOUT
    while not any("time:wall" in line for line in trace_lines()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("preprocess_ms" in line for line in trace_lines()), "the model's latency line"
    assert any("time:wall" in line for line in trace_lines()), "the timing middleware's line"


def test_grpc_explain_adds_the_heatmap(grpc_predictor, sample_images):
    stub, _, _ = grpc_predictor
    files = sample_images.probe[:3]
    plain, explained = answer(stub, infer_request(files)), answer(stub, infer_request(files, explain=True))
    explained_values = values(explained)
    heatmap = np.asarray(explained_values.pop("heatmap"), dtype=np.float32)
    assert heatmap.shape == (3, 32, 32) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert explained_values == values(plain)


def test_grpc_answers_only_the_outputs_asked_for(grpc_predictor, sample_images):
    """The protocol returns every output only when none is named; KServe's to_grpc() sent them all anyway."""
    stub, _, _ = grpc_predictor
    request = infer_request(sample_images.probe[:2])
    asked = ["verdict", "label"]
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in asked)
    assert [output.name for output in answer(stub, request).outputs] == asked


@pytest.mark.parametrize(
    ("files", "name", "message"),
    [
        ([b"not an image"], "image", "input 'image' item 0"),
        ([b"x"], "pixels", "expected one input named 'image'"),
        ([], "image", "input 'image': no images in the request"),
    ],
)
def test_grpc_bad_input_is_invalid_argument_naming_it(grpc_predictor, files, name, message):
    """The client's mistake: KServe's status, and one INFO line in the log (KServe's interceptor logs an ERROR
    with a traceback), as over HTTP (test_predictor.py)."""
    stub, _, log_file = grpc_predictor
    seen = log_file.stat().st_size
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(infer_request(files, name), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    with log_file.open() as log:
        log.seek(seen)
        lines = log.read().splitlines()
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines
    answered = [line for line in lines if " INFO " in line and "answered INVALID_ARGUMENT" in line]
    assert [line for line in answered if message in line], lines


def test_grpc_repository_load_answers_loaded_and_unload_then_load_serves_again(grpc_predictor, sample_images):
    """With reload on, RepositoryModelLoad reloaded the model and then answered INTERNAL (KServe's servicer
    read a dict its extension never returned), logging an ERROR traceback; unload the same."""
    stub, _, log_file = grpc_predictor
    loaded = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="deepguard"), timeout=TIMEOUT)
    assert (loaded.model_name, loaded.isLoaded) == ("deepguard", True)
    unloaded = stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name="deepguard"), timeout=TIMEOUT
    )
    assert (unloaded.model_name, unloaded.isUnloaded) == ("deepguard", True)
    assert stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name="deepguard"), timeout=TIMEOUT
    ).isLoaded
    assert answer(stub, infer_request(sample_images.probe[:1])).outputs[0].name == "fake_probability"
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="other"), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Internal server error" not in log_file.read_text()


def test_grpc_is_off_unless_asked_for(predictor):
    """KServe's gRPC server binds every interface, so the predictor starts it only with --enable_grpc true."""
    from kserve import model_server

    from serving.__main__ import build_parser

    assert build_parser(model_server.parser).parse_args([]).enable_grpc is False
    assert "gRPC" not in predictor.log_file.read_text()
