"""Web batch benchmark: 32 images as 32 ``POST /api/predict`` calls (baseline) vs one ``/api/predictions``.

Run from the repository root: ``python bench/web_batch_bench.py [--rounds 20] [--files 32]``. It serves the
default architecture (untrained: time does not depend on the weights) with ``python -m serving`` and the web
app under gunicorn on free loopback ports (serving_bench.py's setup), then times, in interleaved rounds so
both see the same background load: the page's old way (one request per image, one after another) and the
page's way now (all files in one multipart request, one V2 call to the predictor), without and with
``explain=true``. Prints the median and p90 seconds per set of files, the ratio to the baseline, and the load
average.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_bench import build_model_folder, free_port, interleaved, load_images, start  # noqa: E402

log = logging.getLogger("bench.web_batch")


def main() -> int:
    """Start the servers, run the rounds, print one table; exit 1 if any request failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds of each way")
    parser.add_argument("--files", type=int, default=32, help="images per set (the page takes up to 32)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    files = [(f"img-{i}.jpg", data) for i, data in enumerate(load_images(args.files))]
    failures: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model_folder(folder)
        predictor_port, web_port = free_port(), free_port()
        predictor_url, web_url = f"http://127.0.0.1:{predictor_port}", f"http://127.0.0.1:{web_port}"
        processes = []
        try:
            command = ["-m", "serving", "--model-uri", str(folder), "--http_port", str(predictor_port)]
            processes.append(
                start(
                    [sys.executable, *command],
                    {"DEEPGUARD_MODEL_VERSION": "bench"},
                    f"{predictor_url}/v2/models/deepguard/ready",
                    Path(tmp) / "predictor.log",
                )
            )
            processes.append(
                start(
                    [sys.executable, "-m", "flask_app"],
                    {
                        "PREDICTOR_URL": predictor_url,
                        "WEB_HOST": "127.0.0.1",
                        "WEB_PORT": str(web_port),
                        # A loaded 2-core machine must not turn the measurement into timeouts.
                        "PREDICTOR_TIMEOUT_S": "60",
                    },
                    f"{web_url}/healthz",
                    Path(tmp) / "web.log",
                )
            )
            session = requests.Session()

            def check(response: requests.Response) -> None:
                if response.status_code != 200:
                    failures.append(f"{response.url} HTTP {response.status_code}: {response.text[:200]}")

            def one_by_one(_: int) -> None:
                for name, data in files:
                    check(session.post(f"{web_url}/api/predict", files={"image": (name, data)}, timeout=60))

            def batch(explain: str) -> object:
                def call(_: int) -> None:
                    parts = [("image", (name, data)) for name, data in files]
                    url = f"{web_url}/api/predictions"
                    response = session.post(url, files=parts, data={"explain": explain}, timeout=60)
                    check(response)
                    if response.status_code != 200 and explain == "true":
                        failures[-1] += " (explain=true)"

                return call

            ways = ["one request per image (baseline)", "one request, all files", "one request, explain=true"]
            samples = interleaved([one_by_one, batch("false"), batch("true")], args.rounds, warmup=2)
            if failures:
                # The predictor's first error, its last lines: what failed, not the ASGI stack above it.
                log_text = (Path(tmp) / "predictor.log").read_text()
                error = log_text[log_text.find("Traceback") :]
                print(error[: error.find(" INFO ")][-2000:])
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)

    base = statistics.median(samples[0])
    print(f"\n{len(files)} images per set, {args.rounds} interleaved rounds, load average {os.getloadavg()}")
    print(f"{'way':<36} {'median s':>9} {'p90 s':>7} {'vs baseline':>12}")
    for way, times in zip(ways, samples, strict=True):
        p90 = statistics.quantiles(times, n=10)[-1]
        median = statistics.median(times)
        print(f"{way:<36} {median:>9.3f} {p90:>7.3f} {base / median:>11.1f}x")
    if failures:
        print(f"{len(failures)} failed requests, first: {failures[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
