"""Benchmark: what the robustness report adds to evaluate, and its table on a trained model.

Baseline: scoring the clean test images once (what evaluate did before the report). Ours: the report on the
same images (each degradation's upload file made, decoded as the predictor decodes it, then scored), with
``stages.robustness.robustness_report``. Both run in one process on one model and the same images,
``--repeats`` times; the script prints median wall and CPU seconds, the ratio, the cost per image, the
estimate for evaluate's default sample and for the whole 10k test split, and the per-degradation table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402

from core.config import load_params  # noqa: E402

log = logging.getLogger("bench.robustness")
FULL_TEST_IMAGES = 10_000  # CIFAKE's test split


def timed(work) -> tuple[float, float, object]:
    """Run ``work()``; return (wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> int:
    """Parse arguments, run baseline and ours, print the comparison and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=REPO / "models/model.keras", help="a trained .keras file"
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cifake-sample.zip")
    parser.add_argument("--per-class", type=int, default=250, help="test images per class")
    parser.add_argument("--threshold", type=float, default=None, help="default: reports/metrics.json's")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Imported after parsing, so that --help does not wait for TensorFlow.
    from architectures_bench import load_subset

    from core.modelstore import load_keras, predict_fake_probability
    from stages.robustness import robustness_report

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threshold = args.threshold
    if threshold is None:
        import json

        threshold = json.loads((REPO / "reports/metrics.json").read_text())["threshold"]
    model = load_keras(args.model)
    images, labels = load_subset(args.data, "test", args.per_class, seed=0)
    labels = labels.astype(np.uint8)
    predict_fake_probability(model, images[:8])  # compile once, outside the timings
    base, ours, report = [], [], None
    for _ in range(args.repeats):
        base.append(timed(lambda: predict_fake_probability(model, images))[:2])
        wall, cpu, report = timed(lambda: robustness_report(model, images, labels, threshold))
        ours.append((wall, cpu))
    n = len(labels)
    b_wall, b_cpu = (statistics.median(x) for x in zip(*base, strict=True))
    o_wall, o_cpu = (statistics.median(x) for x in zip(*ours, strict=True))
    default = load_params(REPO / "params.yaml").evaluation.robustness_sample
    print(
        f"{n} test images, median of {args.repeats}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"baseline (clean scoring once):  wall {b_wall:7.2f} s  CPU {b_cpu:7.2f} s")
    print(f"ours (robustness report):       wall {o_wall:7.2f} s  CPU {o_cpu:7.2f} s")
    print(f"ratio ours/baseline:            wall {o_wall / b_wall:7.1f} x  CPU {o_cpu / b_cpu:7.1f} x")
    per_image = o_cpu / n
    print(f"report CPU per test image: {1000 * per_image:.1f} ms (9 degradations)")
    if default is not None:
        print(f"default robustness_sample {default}/class: ~{2 * default * per_image:.0f} CPU s")
    print(f"whole test split ({FULL_TEST_IMAGES}): ~{FULL_TEST_IMAGES * per_image:.0f} CPU s")
    print(f"\nthreshold {threshold:.4f}")
    print(f"{'degradation':15} {'accuracy':>9} {'roc_auc':>8} {'flipped':>8} {'fake->REAL':>10}")
    for name, s in report["degradations"].items():
        print(
            f"{name:15} {s['accuracy']:9.4f} {s['roc_auc']:8.4f} {s['flipped']:8.4f} "
            f"{s['fake_called_real']:10.4f}"
        )
    mean = report["degraded_mean"]
    print(f"{'degraded mean':15} {mean['accuracy']:9.4f} {mean['roc_auc']:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
