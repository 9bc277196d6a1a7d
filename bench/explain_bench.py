"""Explanation benchmark: Grad-CAM heatmaps vs plain prediction, in process and through the KServe predictor.

Run from the repository root: ``python bench/explain_bench.py [--requests 300]``. It saves the default
architecture (untrained: latency does not depend on the weights; flip averaging as params.yaml says) as an
MLflow model folder, starts ``python -m serving`` on a free loopback port and prints, for one image per
request, the p50/p99 of plain prediction (the baseline) beside explanation with their ratio: in process
(decode + score vs decode + score + Grad-CAM), V1 ``:predict`` vs ``:explain`` and V2 ``/infer`` without and
with ``"explain": true``; then milliseconds per image in 64-image V2 requests. Plain and explained calls are
interleaved, so both see the same background load, which is printed (1-minute load average before and after).
Target: explain p50 <= 25 ms per image on 2 cores.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import requests
from serving_bench import (
    BATCH,
    build_model_folder,
    free_port,
    interleaved,
    load_images,
    percentiles,
    start,
    v2_body,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.imaging import decode_for_model  # noqa: E402
from core.labels import decide  # noqa: E402

log = logging.getLogger("bench.explain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency row")
    parser.add_argument("--batches", type=int, default=20, help="64-image requests per batch row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from core.modelstore import load_model_dir, predict_fake_probability
    from serving.explain import build_explainer

    load_before = os.getloadavg()[0]
    files = load_images(500)
    encoded = [base64.b64encode(f).decode("ascii") for f in files]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        folder = Path(tmp) / "model"
        architecture = build_model_folder(folder)
        model, metadata = load_model_dir(folder)
        explainer = build_explainer(model, metadata.image_size)
        log.info("model: %s (untrained), %d call(s) of its last conv stage", architecture, explainer.stages)

        def in_process_predict(i: int) -> None:
            predict_fake_probability(model, decode_for_model(files[i % len(files)], 32)[None])

        def in_process_explain(i: int) -> None:
            images = decode_for_model(files[i % len(files)], 32)[None]
            probabilities = predict_fake_probability(model, images)
            explainer(images, decide(probabilities, metadata.threshold).astype(bool))

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start(
            [sys.executable, "-m", "serving", "--model-uri", str(folder), "--http_port", str(port)],
            {"DEEPGUARD_MODEL_VERSION": "bench"},
            f"{url}/v2/models/deepguard/ready",
            Path(tmp) / "predictor.log",
        )
        try:
            session = requests.Session()

            def post(path: str, body: dict) -> None:
                nonlocal failures
                response = session.post(f"{url}{path}", json=body, timeout=120)
                failures += response.status_code != 200

            def v1(verb: str):  # -> Callable[[int], None]
                return lambda i: post(
                    f"/v1/models/deepguard:{verb}",
                    {"instances": [{"image": {"b64": encoded[i % len(encoded)]}}]},
                )

            def v2(explain: bool, count: int = 1):  # -> Callable[[int], None]
                def call(i: int) -> None:
                    first = (i * count) % (len(encoded) - count)
                    body = v2_body(encoded[first : first + count])
                    if explain:
                        body["parameters"] = {"explain": True}
                    post("/v2/models/deepguard/infer", body)

                return call

            singles = interleaved(
                [in_process_predict, in_process_explain, v1("predict"), v1("explain"), v2(False), v2(True)],
                args.requests,
            )
            batches = interleaved([v2(False, BATCH), v2(True, BATCH)], args.batches, warmup=3)
        finally:
            process.terminate()
            process.wait(timeout=30)
    load_after = os.getloadavg()[0]

    print()
    print(
        f"Explain benchmark: {architecture} (untrained), CIFAKE JPEGs, loopback, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before / {load_after:.1f} after; {args.requests} requests per row"
    )
    print(f"{'one image per request':<44} {'p50 ms':>9} {'p99 ms':>9} {'explain / plain p50':>20}")
    names = ["in process: decode + score", "  + Grad-CAM", "V1 :predict", "  V1 :explain"]
    names += ["V2 /infer", '  V2 /infer, "explain": true']
    for index, (name, samples) in enumerate(zip(names, singles, strict=True)):
        p50, p99 = percentiles(samples)
        ratio = f"{p50 / percentiles(singles[index - 1])[0]:>20.2f}" if index % 2 else ""
        print(f"{name:<44} {p50:>9.2f} {p99:>9.2f} {ratio}")
    plain, explained = (statistics.median(samples) * 1000 / BATCH for samples in batches)
    print(
        f"V2, {BATCH} images per request, ms per image: plain {plain:.2f}, explain {explained:.2f}, "
        f"ratio {explained / plain:.2f}"
    )
    print(f"non-200 responses: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
