"""Monitoring overhead: single-image V2 latency with metrics and records on vs off, in one run.

Run from the repository root: ``python bench/monitoring_bench.py [--requests 1000]``. It saves the default
architecture (untrained) as an MLflow model folder and starts three predictors on free loopback ports:

* baseline: our Prometheus hooks replaced by no-ops and ``--no-monitoring`` (KServe's own metrics stay);
* metrics: ``--no-monitoring`` (the Prometheus series only);
* metrics + records: the default, writing records to a temporary folder.

Requests go to the three in turn (interleaved), so all see the same background load, and the table gives
p50/p99 of each and the p50 added over the baseline; the target is <= 0.3 ms added by metrics + records.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serving_bench import (  # noqa: E402
    build_model_folder,
    free_port,
    interleaved,
    load_images,
    percentiles,
    start,
    v2_body,
)

log = logging.getLogger("bench.monitoring")
BASELINE_FLAG = "--serve-without-our-metrics"


def serve_without_our_metrics(argv: list[str]) -> int:
    """``python -m serving`` with DeepGuard's metric hooks as no-ops: the baseline predictor."""
    import serving.metrics
    import serving.server
    from serving.__main__ import main as serve

    def nothing(*args: object, **kwargs: object) -> None:
        return None

    for hook in ("observe_decode_error", "observe_model_call", "set_model", "observe_scores"):
        setattr(serving.metrics, hook, nothing)

    class Passthrough:
        def __init__(self, app: object) -> None:
            self.app = app

        async def __call__(self, scope: dict, receive: object, send: object) -> None:
            await self.app(scope, receive, send)

    serving.server.RequestMetricsMiddleware = Passthrough
    return serve([*argv, "--no-monitoring"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per predictor")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    files = load_images(500)
    encoded = [base64.b64encode(f).decode("ascii") for f in files]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as tmp:
        folder = Path(tmp) / "model"
        architecture = build_model_folder(folder)
        log.info("model: %s (untrained), %d input files", architecture, len(files))
        variants = {
            "baseline (no DeepGuard metrics, no records)": [str(Path(__file__).resolve()), BASELINE_FLAG],
            "metrics (--no-monitoring)": ["-m", "serving", "--no-monitoring"],
            "metrics + records": ["-m", "serving", "--monitoring-dir", str(Path(tmp) / "monitoring")],
        }
        processes, calls = [], []
        try:
            for i, (name, command) in enumerate(variants.items()):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                processes.append(
                    start(
                        [sys.executable, *command, "--model-uri", str(folder), "--http_port", str(port)],
                        {"DEEPGUARD_MODEL_VERSION": "bench"},
                        f"{url}/v2/models/deepguard/ready",
                        Path(tmp) / f"predictor-{i}.log",
                    )
                )
                session = requests.Session()

                def one(
                    j: int, session: requests.Session = session, url: str = url, name: str = name
                ) -> None:
                    response = session.post(
                        f"{url}/v2/models/deepguard/infer",
                        json=v2_body([encoded[j % len(encoded)]]),
                        timeout=60,
                    )
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")

                calls.append(one)
            samples = interleaved(calls, args.requests)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
        # Counted after SIGTERM: the predictor writes what it had queued before it exits.
        records = sum(
            len(path.read_bytes().splitlines()) for path in (Path(tmp) / "monitoring").rglob("*.jsonl")
        )
    load_after = os.getloadavg()

    base_p50 = statistics.median(samples[0]) * 1000
    print(f"\nsingle-image V2 latency, {args.requests} interleaved requests per predictor")
    print(f"{'predictor':48} {'p50 ms':>8} {'p99 ms':>8} {'added p50 ms':>13} {'ratio':>6}")
    for name, timings in zip(variants, samples, strict=True):
        p50, p99 = percentiles(timings)
        print(f"{name:48} {p50:8.3f} {p99:8.3f} {p50 - base_p50:13.3f} {p50 / base_p50:6.3f}")
    print(
        f"records written by the metrics + records predictor: {records} ({args.requests} + 20 warm-up sent)"
    )
    print(f"load average (1/5/15 min) before: {load_before}, after: {load_after}; cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == BASELINE_FLAG:
        sys.exit(serve_without_our_metrics(sys.argv[2:]))
    sys.exit(main())
