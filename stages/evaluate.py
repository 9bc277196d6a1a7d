"""Stage 5, evaluate: choose the decision threshold on validation, then measure the test split once.

Outputs ``reports/metrics.json`` (DVC metrics) and PNG figures in ``reports/figures/`` (DVC plots): confusion
matrix, ROC curve, precision-recall curve and calibration; all are logged to the training run in MLflow.
The robustness report (``stages/robustness.py``) and the extra sets (``stages/extra_sets.py``) are scored here
too, with the same model and threshold.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
from sklearn import metrics as skm

from core import tracking
from core.atomic import write_json
from core.cli import run_stage, stage_parser
from core.config import EvaluationParams, Params
from core.drift import build_reference
from core.labels import CLASS_NAMES, FAKE
from core.metrics import classification_metrics
from core.modelstore import load_keras, predict_fake_probability
from core.pipeline import FIGURES_DIR, METRICS_FILE, MODEL_DIR, MODEL_FILE, PROCESSED_DIR, REFERENCE_FILE
from core.tracking import load_run_id
from stages import extra_sets, robustness
from stages.figures import plt, save_figure
from stages.shards import load_split

log = logging.getLogger(__name__)


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, metric: str) -> float:
    """The threshold that maximises ``metric`` (accuracy or f1) on the given (validation) data.

    Every distinct score is a candidate (``probability >= threshold`` means FAKE); ties go to the candidate
    closest to 0.5.
    """
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities, pos_label=FAKE, drop_intermediate=False)
    positives = np.count_nonzero(labels == FAKE)
    negatives = len(labels) - positives
    tp, fp = tpr * positives, fpr * negatives
    if metric == "accuracy":
        value = (tp + negatives - fp) / len(labels)
    else:
        value = 2 * tp / np.maximum(tp + fp + positives, 1)
    finite = np.isfinite(thresholds)
    value, thresholds = value[finite], thresholds[finite]
    best = np.flatnonzero(value == value.max())
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])


def _figures(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, test: dict, bins: int
) -> dict[str, plt.Figure]:
    figures: dict[str, plt.Figure] = {}
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    skm.ConfusionMatrixDisplay(np.array(test["confusion_matrix"]), display_labels=CLASS_NAMES).plot(
        ax=ax, cmap="Blues", values_format="d", colorbar=False
    )
    ax.set_title(f"Test confusion matrix (threshold {threshold:.3f})")
    figures["confusion_matrix"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.RocCurveDisplay.from_predictions(labels, probabilities, pos_label=FAKE, ax=ax, name="DeepGuard")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_title(f"Test ROC (AUC {test['roc_auc']:.4f})")
    figures["roc_curve"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.PrecisionRecallDisplay.from_predictions(
        labels, probabilities, pos_label=FAKE, ax=ax, name="DeepGuard"
    )
    ax.set_title(f"Test precision-recall (AP {test['pr_auc']:.4f})")
    figures["pr_curve"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    from sklearn.calibration import CalibrationDisplay

    CalibrationDisplay.from_predictions(labels, probabilities, n_bins=bins, ax=ax, name="DeepGuard")
    ax.set_title(f"Test calibration (ECE {test['ece']:.4f})")
    figures["calibration"] = fig
    return figures


def evaluate(model, params: EvaluationParams) -> dict:
    """Score validation and test; the threshold comes from validation only.

    Also writes the drift reference (``reports/reference.json``): the test images' statistics and scores,
    which register logs with the version and the drift monitor compares served traffic with.
    """
    val_x, val_y = load_split(PROCESSED_DIR, "val")
    test_x, test_y = load_split(PROCESSED_DIR, "test")
    val_p = predict_fake_probability(model, val_x)
    threshold = choose_threshold(np.asarray(val_y), val_p, params.threshold_metric)
    test_p = predict_fake_probability(model, test_x)
    test = classification_metrics(np.asarray(test_y), test_p, threshold, params.calibration_bins)
    result = {
        "threshold": threshold,
        "threshold_metric": params.threshold_metric,
        "val": classification_metrics(np.asarray(val_y), val_p, threshold, params.calibration_bins),
        "test": test,
    }
    write_json(REFERENCE_FILE, build_reference(test_x, test_p))
    for name, figure in _figures(
        np.asarray(test_y), test_p, threshold, test, params.calibration_bins
    ).items():
        save_figure(figure, FIGURES_DIR / f"{name}.png")
    return result


def run(params: Params) -> dict:
    """Run evaluate in the current workspace.

    Returns:
        The content of reports/metrics.json.
    """
    import mlflow

    extra = extra_sets.check(params.evaluation.extra_sets)  # a bad set fails before any scoring
    model = load_keras(MODEL_DIR / MODEL_FILE)
    result = evaluate(model, params.evaluation)
    size = int(load_split(PROCESSED_DIR, "test")[0].shape[1])
    result["extra_sets"] = {s.name: extra_sets.score(model, s, result["threshold"], size) for s in extra}
    robust = robustness.run(model, result["threshold"], params.evaluation)
    write_json(METRICS_FILE, result)
    experiment = tracking.setup(params.mlflow)
    with tracking.stage_run("evaluate", experiment.experiment_id, load_run_id()):
        mlflow.log_metric("threshold", result["threshold"])
        for split in ("val", "test"):
            mlflow.log_metrics({f"{split}_{k}": v for k, v in result[split].items() if isinstance(v, float)})
        mlflow.log_artifact(str(METRICS_FILE), "evaluation")
        extra_sets.log_to_mlflow(result["extra_sets"])
        robustness.log_to_mlflow(robust)
        for figure in sorted(FIGURES_DIR.glob("*.png")):
            mlflow.log_artifact(str(figure), "figures")
    test = result["test"]
    log.info(
        "evaluate done: threshold %.4f (from validation); test accuracy %.4f, ROC-AUC %.4f, F1 %.4f",
        result["threshold"],
        test["accuracy"],
        test["roc_auc"],
        test["f1"],
    )
    return result


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.evaluate``."""
    return run_stage("evaluate", _main, stage_parser("evaluate", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
