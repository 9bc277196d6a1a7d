"""Benchmark: calibration before and after (Platt or temperature); the bands' coverage and precision.

Runs the real pipeline stages (ingest, preprocess, features, train, evaluate; ``python -m stages.<name>``) in
a throw-away workspace on a CIFAKE archive, then reads ``reports/metrics.json`` and
``reports/training.json``. The baseline is the same trained model without its ``Temperature`` layer (what
evaluate reports as "before"); ours is the model as saved and served. It prints both and their ratio for ECE,
Brier and NLL on test, and the bands' edges, coverage and precision on validation (where they were chosen)
and test (where they are measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
STAGES = ("ingest", "preprocess", "features", "train", "evaluate")


def run_pipeline(workdir: Path, data: Path, overrides: list[str]) -> None:
    """Run the stages up to evaluate in ``workdir`` with a local MLflow store there."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    sets = [f"--set={item}" for item in ["data.source=local", f"data.local_path={data}", *overrides]]
    for stage in STAGES:
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                f"stages.{stage}",
                "--workdir",
                str(workdir),
                "--params",
                str(PARAMS),
                *sets,
            ],
            cwd=REPO,
            env=env,
            check=True,
        )
        print(f"# {stage}: {time.monotonic() - started:.0f} s", flush=True)


def report(workdir: Path) -> str:
    """The before/after and band tables from a workspace's reports."""
    sys.path.insert(0, str(REPO))
    from core.labels import band_edge_text
    from core.metrics import format_metric

    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    training = json.loads((workdir / "reports/training.json").read_text())
    before, after = metrics["calibration"]["test"]["before"], metrics["calibration"]["test"]["after"]
    lines = [
        f"{training['calibration_method']}: T = {training['temperature']:.4f}, "
        f"b = {training.get('calibration_bias', 0.0):.4f} (fitted on validation); validation NLL "
        f"{training['val_nll_before_calibration']:.4f} -> {training['val_nll_after_calibration']:.4f}",
        f"test images {metrics['test']['count']}, test ROC-AUC {format_metric(metrics['test']['roc_auc'])}",
        "",
        "test metric   before (T=1)   after (ours)   after/before",
    ]
    for key in ("ece", "brier", "nll"):
        ratio = after[key] / before[key] if before[key] else float("nan")
        lines.append(f"{key:<12}  {before[key]:>12.4f}   {after[key]:>12.4f}   {ratio:>12.3f}")
    lines += [
        "",
        f"bands at precision {metrics['band_precision']}: REAL <= {band_edge_text(metrics['real_below'])}, "
        f"FAKE >= {band_edge_text(metrics['fake_above'])} (threshold {metrics['threshold']:.4f})",
        "split  coverage  decided_acc  real_prec  fake_prec  real_cov  fake_cov  count  binary_acc",
    ]
    for split in ("val", "test"):
        b = {key: format_metric(value) for key, value in metrics["bands"][split].items()}  # None: "n/a"
        lines.append(
            f"{split:<5}  {b['coverage']:>8}  {b['decided_accuracy']:>11}  {b['real_precision']:>9}  "
            f"{b['fake_precision']:>9}  {b['real_coverage']:>8}  {b['fake_coverage']:>8}  "
            f"{b['count']:>5}  {metrics[split]['accuracy']:>10.4f}"
        )
    return "\n".join(lines)


def compare_methods(workdir: Path, bins: int = 10) -> str:
    """Both methods train offers (Platt, temperature) against isotonic regression, measured on test.

    All three are fitted on the same validation scores of the workspace's model without its calibration layer,
    Platt and temperature with train's own fitting functions. Platt fits ``sigmoid(logit(p) / T + b)`` (two
    parameters); isotonic fits a monotone step function (many parameters, ties scores; not offered by train).
    The baseline is the uncalibrated model.
    """
    sys.path.insert(0, str(REPO))
    from sklearn.isotonic import IsotonicRegression

    from core.layers import without_temperature
    from core.metrics import calibration_metrics
    from core.modelstore import load_keras, predict_fake_probability
    from stages.calibration import apply_temperature, fit_platt, fit_temperature
    from stages.shards import load_split

    model = without_temperature(load_keras(workdir / "models/model.keras"))
    scores = {}
    for split in ("val", "test"):
        images, labels = load_split(workdir / "data/processed", split)
        scores[split] = (np.asarray(labels), predict_fake_probability(model, images))
    (val_y, val_p), (test_y, test_p) = scores["val"], scores["test"]
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(val_p, val_y)
    calibrated = {
        "none (baseline)": test_p,
        "temperature": apply_temperature(test_p, fit_temperature(val_y, val_p)),
        "platt (default)": apply_temperature(test_p, *fit_platt(val_y, val_p)),
        "isotonic": isotonic.predict(test_p),
    }
    base = calibration_metrics(test_y, test_p, bins)
    lines = ["method               test ECE   Brier     NLL    (ratio to baseline: ECE, Brier, NLL)"]
    for name, p in calibrated.items():
        m = calibration_metrics(test_y, np.asarray(p), bins)
        ratios = ", ".join(f"{m[k] / base[k]:.3f}" for k in ("ece", "brier", "nll"))
        lines.append(f"{name:<19}  {m['ece']:>8.4f}  {m['brier']:.4f}  {m['nll']:.4f}   ({ratios})")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the pipeline to evaluate, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifake-sample.zip")
    parser.add_argument("--per-class", type=int, default=None, help="data.sample_per_class (default: all)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--band-precision", type=float, default=None, help="evaluation.band_precision")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: temp)")
    parser.add_argument(
        "--report-only", action="store_true", help="print the tables of an existing --workdir"
    )
    parser.add_argument(
        "--compare-methods", action="store_true", help="also compare with Platt and isotonic scaling"
    )
    args = parser.parse_args()
    overrides = [f"training.epochs={args.epochs}", f"data.sample_per_class={args.per_class or 'null'}"]
    if args.band_precision is not None:
        overrides.append(f"evaluation.band_precision={args.band_precision}")
    if args.report_only:
        print(report(args.workdir))
        if args.compare_methods:
            print(compare_methods(args.workdir.resolve()))
        return
    with tempfile.TemporaryDirectory(prefix="calibration-bench-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        print(f"# data {args.data}, overrides {overrides}, workspace {workdir}", flush=True)
        run_pipeline(workdir, args.data.resolve(), overrides)
        print(report(workdir))
        if args.compare_methods:
            print(compare_methods(workdir))


if __name__ == "__main__":
    main()
