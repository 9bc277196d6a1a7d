"""Liveness under the worst load: one client sends 120 x 6000x6000 PNG requests, four send single images.

Run from the repository root: ``python bench/serving_liveness_bench.py [--seconds 30]``. It starts
``python -m serving`` on a free loopback port with an untrained default model (as
bench/serving_bench.py does), samples ``GET /v2/health/live`` every 50 ms on an idle server (the baseline),
then again while the heavy client alternates the 120-image request (over the per-request pixel budget: 400)
with a 2-image one inside it (72 MP decoded), and four clients send one CIFAKE image per request. It prints
liveness p50/p99 idle and under load with their ratio, the responses by status, and exits 1 on any 5xx or a
liveness p99 of 200 ms or more.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_bench import build_model_folder, free_port, load_images, start  # noqa: E402

log = logging.getLogger("bench.liveness")
BIG_SIDE = 6000
BIG_COUNT = 120
LIGHT_CLIENTS = 4
LIVENESS_TARGET_MS = 200.0


def big_png() -> bytes:
    """A 6000x6000 PNG of a few bytes' worth of detail (~120 KB): cheap to send, 36 MP to decode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.new("RGB", (BIG_SIDE, BIG_SIDE), (120, 80, 40))
    image.paste(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_liveness(url: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Latencies of ``GET url`` every 50 ms for ``seconds`` (a 5 s timeout counts as 5 s)."""
    session, samples = requests.Session(), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        start_time = time.perf_counter()
        try:
            ok = session.get(url, timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        samples.append(time.perf_counter() - start_time if ok else 5.0)
        time.sleep(0.05)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the loaded phase")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    small = [base64.b64encode(f).decode("ascii") for f in load_images(200)]
    big = base64.b64encode(big_png()).decode("ascii")
    heavy_bodies = [
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [BIG_COUNT], "data": [big] * BIG_COUNT}]},
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [big] * 2}]},
    ]
    statuses = {"heavy": collections.Counter(), "single": collections.Counter()}
    lock = threading.Lock()

    with tempfile.TemporaryDirectory(prefix="liveness-bench-") as tmp:
        folder = Path(tmp) / "model"
        build_model_folder(folder)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "serving", "--model-uri", str(folder)]
        command += ["--http_port", str(port)]
        predictor = start(
            command,
            {"DEEPGUARD_MODEL_VERSION": "bench"},
            f"{url}/v2/models/deepguard/ready",
            Path(tmp) / "predictor.log",
        )
        try:
            live_url, infer_url = f"{url}/v2/health/live", f"{url}/v2/models/deepguard/infer"
            idle = sample_liveness(live_url, 5.0)
            stop = threading.Event()

            def client(kind: str, index: int) -> None:
                session, i = requests.Session(), index
                while not stop.is_set():
                    if kind == "heavy":
                        body = heavy_bodies[i % 2]
                    else:
                        body = {
                            "inputs": [
                                {
                                    "name": "image",
                                    "datatype": "BYTES",
                                    "shape": [1],
                                    "data": [small[i % len(small)]],
                                }
                            ]
                        }
                    try:
                        status = str(session.post(infer_url, json=body, timeout=120).status_code)
                    except requests.RequestException as exc:
                        status = type(exc).__name__
                    with lock:
                        statuses[kind][status] += 1
                    i += 1

            threads = [threading.Thread(target=client, args=("heavy", 0))]
            threads += [threading.Thread(target=client, args=("single", k)) for k in range(LIGHT_CLIENTS)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # the heavy request is on the wire and being read
            loaded = sample_liveness(live_url, args.seconds)
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            predictor.terminate()
            predictor.wait(timeout=30)

    idle_p50, idle_p99 = (float(np.percentile(idle, q) * 1000) for q in (50, 99))
    load_p50, load_p99 = (float(np.percentile(loaded, q) * 1000) for q in (50, 99))
    errors = sum(
        n
        for counter in statuses.values()
        for status, n in counter.items()
        if not status.isdigit() or status.startswith("5")
    )
    print()
    print(
        f"Liveness under load: 1 client x {BIG_COUNT} x {BIG_SIDE}x{BIG_SIDE} PNG requests (alternating "
        f"with 2-image ones), {LIGHT_CLIENTS} single-image clients, {args.seconds:.0f} s, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'GET /v2/health/live':<30} {'idle':>9} {'loaded':>9} {'loaded / idle':>14}")
    print(f"{'p50 ms':<30} {idle_p50:>9.2f} {load_p50:>9.2f} {load_p50 / idle_p50:>14.2f}")
    print(f"{'p99 ms':<30} {idle_p99:>9.2f} {load_p99:>9.2f} {load_p99 / idle_p99:>14.2f}")
    print(f"liveness samples: {len(idle)} idle, {len(loaded)} loaded")
    for kind, counter in statuses.items():
        print(f"{kind} responses by status: {dict(sorted(counter.items()))}")
    print(f"5xx or failed requests: {errors}; liveness p99 target < {LIVENESS_TARGET_MS:.0f} ms")
    return 0 if errors == 0 and load_p99 < LIVENESS_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
