"""Serving benchmark: the in-process model call (baseline) vs the KServe predictor and Flask, on loopback.

Run from the repository root: ``python bench/serving_bench.py [--requests 1000]``. It builds the default
architecture (stages.architectures, untrained: latency does not depend on the weights), saves it as an MLflow
model folder, starts ``python -m serving`` and the web app under gunicorn on free loopback ports,
and prints one table: single-image latency p50/p99 over N sequential requests, images/s with 64 images per
request, requests/s with 8 concurrent clients, each beside the in-process baseline with the ratio, the
single-image requests/s of 8 concurrent clients beside one client's (the micro-batcher's gain; target
>= 1.6x on 2 cores), and the 5xx count. V2 is timed over HTTP and over gRPC (``--enable_grpc true``). A
KServe ModelServer whose model answers a constant, on the same loopback with the same clients, shows what the
framework and the client cost a request before any of ours. The V2 HTTP rows are timed twice: with
``requests`` (what a typical Python client pays) and with the standard library's ``http.client`` on one
keep-alive connection (no client library's per-call work), so that the client's share shows apart from
the server's.
The baseline is the predictor's own model call (``ServedModel.score``: LiteRT for a few images, Keras for
more, serving/litert.py) on the same decoded image, in this process; Keras' ``predict_on_batch`` and its
``predict`` are timed beside it. Baseline and served calls are interleaved, so both see the same background
load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.imaging import decode_for_model  # noqa: E402
from core.modelstore import ModelMetadata, predict_fake_probability  # noqa: E402

log = logging.getLogger("bench.serving")
SAMPLE_ZIP = REPO / ".." / "shared" / "data" / "cifake-sample.zip"
BATCH = 64
CLIENTS = 8


def load_images(count: int) -> list[bytes]:
    """CIFAKE test JPEGs from the shared sample, or generated 32x32 JPEGs when it is absent."""
    if SAMPLE_ZIP.is_file():
        with zipfile.ZipFile(SAMPLE_ZIP) as archive:
            names = sorted(n for n in archive.namelist() if n.startswith("test/") and n.endswith(".jpg"))
            return [archive.read(n) for n in names[:count]]
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    return files


def build_model_folder(dest: Path) -> str:
    """Save the default architecture as an MLflow Keras model folder; returns the architecture's name."""
    import mlflow

    from core.config import load_params

    params = load_params(REPO / "params.yaml")
    from core.layers import with_flip_averaging
    from stages.architectures import build_model

    model = build_model(
        params.model.architecture,
        image_size=32,
        dropout=params.model.dropout,
        pretrained_weights="none",
        augmentation=params.augmentation,
        mean=[0.5] * 3,
        variance=[0.06] * 3,
        seed=0,
        spectrum_branch=params.model.spectrum_branch,
    )
    if params.model.test_time_flip:
        model = with_flip_averaging(model)
    metadata = ModelMetadata(
        threshold=0.5, image_size=32, architecture=model.name, data_source="bench", synthetic_data=True
    )
    mlflow.keras.save_model(model, str(dest), metadata=metadata.to_dict(), pip_requirements=[])
    return model.name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict[str, str], ready_url: str, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(ready_url, timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{ready_url} not ready in time")


def v2_body(items: list[str]) -> dict:
    """A V2 request carrying ``items`` (base64 image files) as the BYTES input ``image``."""
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(items)], "data": items}]}


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    return float(np.percentile(samples, 50) * 1000), float(np.percentile(samples, 99) * 1000)


def timed(call: Callable[[int], None], count: int, warmup: int = 20) -> list[float]:
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(count):
        start_time = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start_time)
    return samples


def interleaved(calls: list[Callable[[int], None]], count: int, warmup: int = 20) -> list[list[float]]:
    """Time each call ``count`` times, taking turns (rotating who goes first), after ``warmup`` rounds."""
    for i in range(warmup):
        for call in calls:
            call(i)
    samples: list[list[float]] = [[] for _ in calls]
    for i in range(count):
        for k in range(len(calls)):
            j = (i + k) % len(calls)
            start_time = time.perf_counter()
            calls[j](i)
            samples[j].append(time.perf_counter() - start_time)
    return samples


class Counter:
    """Counts responses by status class; any non-200 is a failure of the benchmark run."""

    def __init__(self) -> None:
        self.errors_5xx = 0
        self.other = 0

    def check(self, status: int) -> None:
        if status >= 500:
            self.errors_5xx += 1
        elif status != 200:
            self.other += 1


class LeanClient:
    """One keep-alive HTTP/1.1 connection through ``http.client``: a request with no client library."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post_json(self, path: str, body: dict) -> int:
        """POST ``body`` as JSON, read the whole answer; returns the status."""
        self.connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        return response.status


def grpc_request(files: list[bytes]):  # -> ModelInferRequest
    """A V2 gRPC request carrying ``files`` (image files, not base64) as the BYTES input ``image``."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    contents = pb.InferTensorContents(bytes_contents=files)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[len(files)], contents=contents
    )
    return pb.ModelInferRequest(model_name="deepguard", inputs=[tensor])


def grpc_stub(port: int):  # -> GRPCInferenceServiceStub
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def serve_constant(port: int, grpc_port: int) -> None:
    """KServe's ModelServer with a model that answers a constant: what the framework alone costs a request."""
    from kserve import InferOutput, InferResponse, Model, ModelServer

    class Constant(Model):
        def __init__(self) -> None:
            super().__init__("deepguard")
            self.ready = True

        async def predict(self, payload, headers=None) -> InferResponse:
            output = InferOutput("fake_probability", [1], "FP32", data=np.array([0.5], dtype=np.float32))
            return InferResponse(response_id="constant", model_name=self.name, infer_outputs=[output])

    ModelServer(http_port=port, grpc_port=grpc_port, enable_grpc=True, enable_latency_logging=False).start(
        [Constant()]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per latency row")
    parser.add_argument("--batches", type=int, default=60, help="64-image requests for the throughput row")
    parser.add_argument("--concurrent-requests", type=int, default=1600, help="requests across 8 clients")
    parser.add_argument("--serve-constant", type=int, nargs=2, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_constant:
        serve_constant(*args.serve_constant)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core.modelstore import set_model_threads
    from serving.model import load_served_model

    set_model_threads(1)  # the predictor's default --model-threads: the baseline runs the same model call

    files = load_images(500)
    encoded = [base64.b64encode(f).decode("ascii") for f in files]
    counter = Counter()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        folder = Path(tmp) / "model"
        architecture = build_model_folder(folder)
        served = load_served_model(str(folder))  # as the predictor loads it: LiteRT converted and checked
        model = served.keras_model
        log.info("model: %s (untrained), %d input files", architecture, len(files))

        # ---- baseline: the same model in this process, same decode, no HTTP --------------------------------
        def in_process_one(i: int) -> None:
            served.score(decode_for_model(files[i % len(files)], 32)[None])

        def keras_one(i: int) -> None:
            predict_fake_probability(model, decode_for_model(files[i % len(files)], 32)[None])

        def naive_one(i: int) -> None:
            model.predict(decode_for_model(files[i % len(files)], 32)[None], verbose=0)

        def in_process_batch(i: int) -> None:
            start_index = (i * BATCH) % (len(files) - BATCH)
            batch = np.stack([decode_for_model(f, 32) for f in files[start_index : start_index + BATCH]])
            served.score(batch)

        naive = timed(naive_one, min(args.requests, 200), warmup=5)

        predictor_port, predictor_grpc_port, web_port = free_port(), free_port(), free_port()
        predictor_url, web_url = f"http://127.0.0.1:{predictor_port}", f"http://127.0.0.1:{web_port}"
        processes = []
        try:
            processes.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "serving",
                        "--model-uri",
                        str(folder),
                        "--http_port",
                        str(predictor_port),
                        "--enable_grpc",
                        "true",
                        "--grpc_port",
                        str(predictor_grpc_port),
                    ],
                    {"DEEPGUARD_MODEL_VERSION": "bench"},
                    f"{predictor_url}/v2/models/deepguard/ready",
                    Path(tmp) / "predictor.log",
                )
            )
            processes.append(
                start(
                    [sys.executable, "-m", "flask_app"],
                    {"PREDICTOR_URL": predictor_url, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(web_port)},
                    f"{web_url}/healthz",
                    Path(tmp) / "web.log",
                )
            )
            constant_port, constant_grpc_port = free_port(), free_port()
            constant_url = f"http://127.0.0.1:{constant_port}"
            processes.append(
                start(
                    [
                        sys.executable,
                        __file__,
                        "--serve-constant",
                        *map(str, (constant_port, constant_grpc_port)),
                    ],
                    {},
                    f"{constant_url}/v2/models/deepguard/ready",
                    Path(tmp) / "constant.log",
                )
            )
            session = requests.Session()
            v2_url = f"{predictor_url}/v2/models/deepguard/infer"
            v1_url = f"{predictor_url}/v1/models/deepguard:predict"

            def v2_one(i: int) -> None:
                body = v2_body([encoded[i % len(encoded)]])
                counter.check(session.post(v2_url, json=body, timeout=60).status_code)

            v2_path = "/v2/models/deepguard/infer"
            predictor_lean, constant_lean = LeanClient(predictor_port), LeanClient(constant_port)

            def v2_lean_one(i: int) -> None:
                counter.check(predictor_lean.post_json(v2_path, v2_body([encoded[i % len(encoded)]])))

            def constant_lean_one(i: int) -> None:
                counter.check(constant_lean.post_json(v2_path, v2_body([encoded[i % len(encoded)]])))

            predictor_grpc, constant_grpc = grpc_stub(predictor_grpc_port), grpc_stub(constant_grpc_port)

            def v2_grpc_one(i: int) -> None:
                predictor_grpc.ModelInfer(grpc_request([files[i % len(files)]]), timeout=60)

            def constant_grpc_one(i: int) -> None:
                constant_grpc.ModelInfer(grpc_request([files[i % len(files)]]), timeout=60)

            def constant_one(i: int) -> None:
                body = v2_body([encoded[i % len(encoded)]])
                url = f"{constant_url}/v2/models/deepguard/infer"
                counter.check(session.post(url, json=body, timeout=60).status_code)

            def v1_one(i: int) -> None:
                body = {"instances": [{"image": {"b64": encoded[i % len(encoded)]}}]}
                counter.check(session.post(v1_url, json=body, timeout=60).status_code)

            def flask_one(i: int) -> None:
                counter.check(
                    session.post(
                        f"{web_url}/api/predict",
                        timeout=60,
                        files={"image": ("x.jpg", files[i % len(files)], "image/jpeg")},
                    ).status_code
                )

            def v2_batch(i: int) -> None:
                start_index = (i * BATCH) % (len(encoded) - BATCH)
                body = v2_body(encoded[start_index : start_index + BATCH])
                counter.check(session.post(v2_url, json=body, timeout=60).status_code)

            latency_calls = [
                in_process_one,
                keras_one,
                v2_one,
                v2_lean_one,
                v2_grpc_one,
                v1_one,
                flask_one,
                constant_one,
                constant_lean_one,
                constant_grpc_one,
            ]
            latency = interleaved(latency_calls, args.requests)
            base_one, keras_one_call, v2, v2_lean, v2_grpc, v1, web = latency[:7]
            constant, constant_lean, constant_grpc = latency[7:]
            base_batch, batched = interleaved([in_process_batch, v2_batch], args.batches, warmup=3)

            def clients_rps(clients: int, total: int) -> float:
                """Requests/s of ``clients`` concurrent single-image clients sending ``total`` requests."""
                sessions = [requests.Session() for _ in range(clients)]

                def client(worker: int) -> None:
                    for i in range(worker, total, clients):
                        body = v2_body([encoded[i % len(encoded)]])
                        counter.check(sessions[worker].post(v2_url, json=body, timeout=60).status_code)

                start_time = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(client, range(clients)))
                return total / (time.perf_counter() - start_time)

            # One client before and after the eight, so both see the same background load on average.
            quarter = args.concurrent_requests // 4
            one_before = clients_rps(1, quarter)
            concurrent_rps = clients_rps(CLIENTS, 2 * quarter)
            one_rps = (one_before + clients_rps(1, quarter)) / 2
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)

    base_p50, base_p99 = percentiles(base_one)
    rows = [
        ("in-process decode + the predictor's call (baseline)", *percentiles(base_one), 1.0),
    ]
    for name, samples in (
        ("in-process decode + Keras predict_on_batch", keras_one_call),
        ("in-process naive model.predict", naive),
        ("V2 /v2/models/deepguard/infer", v2),
        ("V2, http.client instead of requests", v2_lean),
        ("V2 gRPC ModelInfer", v2_grpc),
        ("V1 /v1/models/deepguard:predict", v1),
        ("Flask /api/predict (via V2)", web),
        ("V2 to KServe with a constant model (no decode)", constant),
        ("V2 to the constant model, http.client", constant_lean),
        ("V2 gRPC to KServe with a constant model", constant_grpc),
    ):
        p50, p99 = percentiles(samples)
        rows.append((name, p50, p99, p50 / base_p50))
    base_ips = BATCH / statistics.median(base_batch)
    v2_ips = BATCH / statistics.median(batched)
    base_rps = 1 / statistics.median(base_one)

    print()
    print(
        f"Serving benchmark: {architecture} (untrained), CIFAKE JPEGs, loopback, {os.cpu_count()} CPUs; "
        f"{args.requests} sequential requests per latency row"
    )
    print(f"{'single image':<50} {'p50 ms':>9} {'p99 ms':>9} {'p50 / baseline':>15}")
    for name, p50, p99, ratio in rows:
        print(f"{name:<50} {p50:>9.2f} {p99:>9.2f} {ratio:>15.2f}")
    print(f"{'throughput':<50} {'baseline':>9} {'served':>9} {'served / base':>15}")
    print(
        f"{'images/s, 64 images per request (V2)':<50} {base_ips:>9.0f} {v2_ips:>9.0f} "
        f"{v2_ips / base_ips:>15.2f}"
    )
    print(
        f"{'requests/s, 8 concurrent clients (V2, 1 image)':<50} {base_rps:>9.0f} {concurrent_rps:>9.0f} "
        f"{concurrent_rps / base_rps:>15.2f}"
    )
    print(f"{'':<50} {'1 client':>9} {'8 clients':>9} {'8 / 1':>15}")
    print(
        f"{'requests/s, single image (V2)':<50} {one_rps:>9.0f} {concurrent_rps:>9.0f} "
        f"{concurrent_rps / one_rps:>15.2f}"
    )
    print(f"5xx responses: {counter.errors_5xx}; other non-200: {counter.other}")
    return 0 if counter.errors_5xx == 0 and counter.other == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
