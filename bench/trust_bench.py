"""Confident and wrong: how often the predictor gives a decided, wrong verdict on degraded uploads.

Run from the repository root after a pipeline run: ``python bench/trust_bench.py --workspace .`` (any
folder where ``dvc repro`` registered a champion in ``mlruns/``). The workspace's test images are re-saved
as users' uploads are (core.degrade: ``blur_1.0``, ``upscale_4x``, ``jpeg_q50``; ``clean`` for reference)
and sent to the real predictor (``python -m serving``, V2, one request per degradation), once with the
domain policy off (``--domain-margin 0``: the plain band verdict) and once on (serving.domain's default
margin, or ``--margin``). Printed per degradation and pooled over the three: confident-and-wrong (share of
all images with a decided REAL/FAKE verdict that is wrong; target <= 3 %), coverage (share decided) and
accuracy among the decided, off beside on with the ratio; then the same pooled figures recomputed from the
served probabilities for other margins (serving.domain.domain_verdicts, the served policy's own function),
which is how the default margin was chosen.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.config import load_params  # noqa: E402
from core.degrade import degraded_file  # noqa: E402
from core.imagestats import image_statistics  # noqa: E402
from core.imaging import decode_upload  # noqa: E402
from core.labels import CLASS_NAMES, EMPTY_FAKE_BAND, EMPTY_REAL_BAND, UNCERTAIN  # noqa: E402
from core.names import champion_uri  # noqa: E402
from core.pipeline import PROCESSED_DIR  # noqa: E402
from serving.domain import DEFAULT_MARGIN, MIN_FINE_DETAIL, domain_verdicts  # noqa: E402
from stages.shards import load_split  # noqa: E402

log = logging.getLogger("bench.trust")
MEASURED = ("blur_1.0", "upscale_4x", "jpeg_q50")
DEGRADATIONS = ("clean", *MEASURED)
SWEEP = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
TIMEOUT = 600
CHUNK = 256  # images per V2 request: under the predictor's default --max-images (512)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(workspace: Path, margin: float, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python -m serving`` for the workspace's champion with ``margin``; wait until ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace.resolve() / 'mlruns' / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    model_uri = champion_uri(load_params(workspace / "params.yaml").mlflow.model_name)
    command = [sys.executable, "-m", "serving", "--model-uri", model_uri, "--http_port", str(port)]
    command += ["--domain-margin", str(margin), "--max-images", "1000", "--max-image-bytes", "2000000"]
    with log_path.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"predictor exited:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v2/models/deepguard/ready", timeout=2).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("predictor not ready in 300 s")


def infer(url: str, files: list[bytes]) -> dict[str, list]:
    """V2 requests of at most CHUNK files each (the predictor's per-request limit); the outputs by name."""
    outputs: dict[str, list] = {}
    for start in range(0, len(files), CHUNK):
        items = [base64.b64encode(f).decode("ascii") for f in files[start : start + CHUNK]]
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(items)], "data": items}]}
        response = requests.post(f"{url}/v2/models/deepguard/infer", json=body, timeout=TIMEOUT)
        if not response.ok:
            raise RuntimeError(f"V2 request refused: HTTP {response.status_code} {response.text[:300]}")
        for output in response.json()["outputs"]:
            outputs.setdefault(output["name"], []).extend(output["data"])
    return outputs


def scores(verdict: list[str], labels: np.ndarray) -> dict[str, float]:
    """Confident-and-wrong share, coverage, and accuracy among the decided."""
    verdict_array = np.asarray(verdict)
    truth = np.asarray([CLASS_NAMES[int(label)] for label in labels])
    decided = verdict_array != UNCERTAIN
    wrong = decided & (verdict_array != truth)
    return {
        "confident_wrong": float(wrong.mean()),
        "coverage": float(decided.mean()),
        "decided_accuracy": float((decided & ~wrong).sum() / max(decided.sum(), 1)),
    }


def ratio(on: float, off: float) -> str:
    return f"{on / off:.2f}x" if off else "n/a"


def main() -> int:
    """Run the measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."), help="pipeline workspace (default: .)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="margin of the 'on' run")
    parser.add_argument("--count", type=int, default=None, help="random test images to use (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images, labels = load_split(args.workspace / PROCESSED_DIR, "test")
    count = len(images) if args.count is None else min(args.count, len(images))
    # A seeded random subset: the split is stored class by class, so its first images are all one class.
    pick = np.sort(np.random.default_rng(0).permutation(len(images))[:count])
    images, labels = np.asarray(images)[pick], np.asarray(labels)[pick]
    files = {
        name: [degraded_file(image, name, seed=i) for i, image in enumerate(images)] for name in DEGRADATIONS
    }
    served: dict[float, dict[str, dict[str, list]]] = {}
    with tempfile.TemporaryDirectory(prefix="trust-bench-") as tmp:
        for margin in (0.0, args.margin):
            started = time.monotonic()
            process, url = serve(args.workspace, margin, Path(tmp) / f"predictor-{margin}.log")
            try:
                served[margin] = {name: infer(url, files[name]) for name in DEGRADATIONS}
                # The served version's threshold and bands, as the predictor applies them.
                parameters = requests.get(f"{url}/v2/models/deepguard", timeout=60).json()["parameters"]
            finally:
                process.terminate()
                process.wait(timeout=60)
            log.info(
                "margin %.2f: served %d x %d images in %.0f s",
                margin,
                len(DEGRADATIONS),
                count,
                time.monotonic() - started,
            )
    off, on = served[0.0], served[args.margin]
    load = os.getloadavg()[0]
    print(
        f"\nconfident-and-wrong on {count} test images per degradation; load average {load:.1f} "
        f"on {os.cpu_count()} cores; margin off = 0, on = {args.margin}"
    )
    print(
        f"{'degradation':<14}{'wrong off':>10}{'wrong on':>10}{'ratio':>8}{'cover off':>11}{'cover on':>10}"
        f"{'acc off':>9}{'acc on':>8}"
    )
    pooled_labels = np.concatenate([labels] * len(MEASURED))
    rows = {
        name: (scores(off[name]["verdict"], labels), scores(on[name]["verdict"], labels))
        for name in DEGRADATIONS
    }
    rows["pooled (3)"] = tuple(
        scores(sum((run[name]["verdict"] for name in MEASURED), []), pooled_labels) for run in (off, on)
    )
    for name, (a, b) in rows.items():
        print(
            f"{name:<14}{a['confident_wrong']:>10.1%}{b['confident_wrong']:>10.1%}"
            f"{ratio(b['confident_wrong'], a['confident_wrong']):>8}"
            f"{a['coverage']:>11.1%}{b['coverage']:>10.1%}"
            f"{a['decided_accuracy']:>9.1%}{b['decided_accuracy']:>8.1%}"
        )
    # The sweep: the served probabilities (identical in both runs) through the policy at other margins.
    facts, detail = {}, {}
    for name in DEGRADATIONS:
        decoded = [decode_upload(f, images.shape[1]) for f in files[name]]
        facts[name] = [fact for _, fact in decoded]
        detail[name] = image_statistics(np.stack([image for image, _ in decoded]))["hf_energy"]
    # The predictor sends the edges its verdict uses, null for an empty band (one that decides nothing).
    bands = (
        EMPTY_REAL_BAND if parameters["real_below"] is None else parameters["real_below"],
        EMPTY_FAKE_BAND if parameters["fake_above"] is None else parameters["fake_above"],
    )
    print(
        f"\nbands {bands}; share with little fine detail (hf_energy < {MIN_FINE_DETAIL}): "
        + ", ".join(f"{name} {np.mean(detail[name] < MIN_FINE_DETAIL):.0%}" for name in DEGRADATIONS)
    )
    print(f"{'margin':>7}{'wrong (3)':>11}{'cover (3)':>11}{'clean wrong':>13}{'clean cover':>13}")
    for margin in SWEEP:
        pooled = []
        for name in MEASURED:
            pooled += domain_verdicts(
                off[name]["fake_probability"], bands, facts[name], images.shape[1], margin, detail[name]
            )
        clean = domain_verdicts(
            off["clean"]["fake_probability"], bands, facts["clean"], images.shape[1], margin, detail["clean"]
        )
        a, c = scores(pooled, pooled_labels), scores(clean, labels)
        print(
            f"{margin:>7.2f}{a['confident_wrong']:>11.1%}{a['coverage']:>11.1%}{c['confident_wrong']:>13.1%}"
            f"{c['coverage']:>13.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
