"""Stage 5, evaluate: choose the threshold and verdict bands on validation, then measure the test split once.

Outputs ``reports/metrics.json`` (DVC metrics) and PNG figures in ``reports/figures/`` (DVC plots): confusion
matrix, ROC curve, precision-recall curve and calibration (reliability before and after the temperature built
into the model by train); all are logged to the training run in MLflow. The robustness report
(``stages/robustness.py``) and the extra sets (``stages/extra_sets.py``) are scored here too, with the same
model and threshold.
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
from core.labels import CLASS_NAMES, EMPTY_FAKE_BAND, EMPTY_REAL_BAND, FAKE, REAL, band_edge, band_edge_text
from core.metrics import band_metrics, calibration_metrics, classification_metrics, format_metric
from core.modelstore import load_keras, predict_fake_probability
from core.pipeline import (
    FIGURES_DIR,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_FILE,
    PROCESSED_DIR,
    REFERENCE_FILE,
    ROBUSTNESS_FILE,
    missing_input,
)
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


def choose_bands(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, precision: float
) -> tuple[float, float]:
    """The widest REAL and FAKE bands on the given (validation) data that each reach ``precision``.

    REAL is ``p <= real_below`` with ``real_below < threshold``; FAKE is ``p >= fake_above`` with
    ``fake_above >= threshold`` (core.labels.verdicts). Every distinct score is a candidate edge; a band's
    precision is the share of its images with its label, and the widest band reaching the target is kept
    (coverage only grows as an edge moves toward the threshold, so this covers as much as possible). A band
    that no edge brings to the target is empty: its edge is ``core.labels.EMPTY_REAL_BAND`` or
    ``EMPTY_FAKE_BAND``, outside [0, 1], so it decides nothing (not even a saturated score of 0.0 or 1.0).

    Args:
        labels: Validation labels, FAKE = 1.
        probabilities: Validation P(FAKE) of the model as served (calibrated).
        threshold: The binary decision threshold, chosen on the same data.
        precision: The precision each band must reach (``evaluation.band_precision``).

    Returns:
        ``(real_below, fake_above)`` with ``real_below <= threshold <= fake_above``.
    """
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    p, labels = p[order], labels[order]
    # REAL band {p <= edge}: its size and true REAL count at the last occurrence of each distinct score.
    last = np.flatnonzero(np.append(p[1:] != p[:-1], True))
    size = last + 1
    real_precision = np.cumsum(labels == REAL)[last] / size
    ok = (real_precision >= precision) & (p[last] < threshold)
    real_below = float(p[last][ok].max()) if ok.any() else EMPTY_REAL_BAND
    # FAKE band {p >= edge}: size and true FAKE count from the first occurrence of each distinct score.
    first = np.flatnonzero(np.insert(p[1:] != p[:-1], 0, True))
    fakes_from = np.cumsum((labels == FAKE)[::-1])[::-1]
    fake_precision = fakes_from[first] / (len(p) - first)
    ok = (fake_precision >= precision) & (p[first] >= threshold)
    fake_above = float(p[first][ok].min()) if ok.any() else EMPTY_FAKE_BAND
    return min(real_below, threshold), max(fake_above, threshold)


def _figures(
    labels: np.ndarray,
    probabilities: np.ndarray,
    uncalibrated: np.ndarray,
    threshold: float,
    test: dict,
    calibration: dict,
    bins: int,
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
    ax.set_title(f"Test ROC (AUC {format_metric(test['roc_auc'])})")
    figures["roc_curve"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.PrecisionRecallDisplay.from_predictions(
        labels, probabilities, pos_label=FAKE, ax=ax, name="DeepGuard"
    )
    ax.set_title(f"Test precision-recall (AP {format_metric(test['pr_auc'])})")
    figures["pr_curve"] = fig
    fig, ax = plt.subplots(figsize=(4.5, 4))
    from sklearn.calibration import CalibrationDisplay

    before, after = calibration["test"]["before"], calibration["test"]["after"]
    CalibrationDisplay.from_predictions(
        labels, uncalibrated, n_bins=bins, ax=ax, name=f"before (ECE {before['ece']:.4f})", marker="s"
    )
    CalibrationDisplay.from_predictions(
        labels,
        probabilities,
        n_bins=bins,
        ax=ax,
        name=f"after, T={calibration['temperature']:.3f}, b={calibration['bias']:.3f} "
        f"(ECE {after['ece']:.4f})",
        marker="o",
    )
    ax.set(xlabel="mean predicted P(FAKE) in the bin", ylabel="observed FAKE rate in the bin")
    ax.set_title("Test reliability before and after calibration")
    ax.legend(loc="upper left", fontsize="small")
    figures["calibration"] = fig
    return figures


def evaluate(model, params: EvaluationParams) -> tuple[dict, dict, dict[str, plt.Figure]]:
    """Score validation and test; the threshold and the verdict bands come from validation only.

    ``model`` is the model as served (with the temperature train built in); the test split is also scored
    without it, to report calibration before and after. Writes nothing: :func:`run` writes every output once
    every score is in.

    Returns:
        ``(metrics, reference, figures)``: the content of reports/metrics.json (without the extra sets); the
        drift reference, the test images' statistics and scores that register logs with the version and the
        drift monitor compares served traffic with; the figures by name.
    """
    from core.layers import calibration_bias_of, temperature_of, without_temperature

    val_x, val_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "val"))
    test_x, test_y = (np.asarray(a) for a in load_split(PROCESSED_DIR, "test"))
    val_p = predict_fake_probability(model, val_x)
    threshold = choose_threshold(val_y, val_p, params.threshold_metric)
    real_below, fake_above = choose_bands(val_y, val_p, threshold, params.band_precision)
    test_p = predict_fake_probability(model, test_x)
    test_uncalibrated = predict_fake_probability(without_temperature(model), test_x)
    test = classification_metrics(test_y, test_p, threshold, params.calibration_bins)
    calibration = {
        "temperature": temperature_of(model),
        "bias": calibration_bias_of(model),
        "test": {
            "before": calibration_metrics(test_y, test_uncalibrated, params.calibration_bins),
            "after": calibration_metrics(test_y, test_p, params.calibration_bins),
        },
    }
    result = {
        "threshold": threshold,
        "threshold_metric": params.threshold_metric,
        "real_below": real_below,
        "fake_above": fake_above,
        "band_precision": params.band_precision,
        "val": classification_metrics(val_y, val_p, threshold, params.calibration_bins),
        "test": test,
        "bands": {
            "val": band_metrics(val_y, val_p, real_below, fake_above),
            "test": band_metrics(test_y, test_p, real_below, fake_above),
        },
        "calibration": calibration,
    }
    figures = _figures(
        test_y, test_p, test_uncalibrated, threshold, test, calibration, params.calibration_bins
    )
    return result, build_reference(test_x, test_p), figures


def _measured(values: dict[str, float | None]) -> dict[str, float]:
    """The values that exist: MLflow has no null (None is refused), and a metric with no value is left out."""
    return {key: value for key, value in values.items() if value is not None}


def run(params: Params) -> dict:
    """Run evaluate in the current workspace.

    Returns:
        The content of reports/metrics.json.
    """
    import mlflow

    extra = extra_sets.check(params.evaluation.extra_sets)  # a bad set fails before any scoring
    if not (MODEL_DIR / MODEL_FILE).is_file():
        raise missing_input(MODEL_DIR / MODEL_FILE)
    model = load_keras(MODEL_DIR / MODEL_FILE)
    result, reference, figures = evaluate(model, params.evaluation)
    size = int(load_split(PROCESSED_DIR, "test")[0].shape[1])
    seen = extra_sets.seen_in_training(PROCESSED_DIR) if extra else frozenset()
    result["extra_sets"] = {
        s.name: extra_sets.score(model, s, result["threshold"], size, seen) for s in extra
    }
    robust = robustness.measure(model, result["threshold"], params.evaluation)
    figures["robustness"] = robustness.figure(robust)
    # Written only now, metrics last: a failure or a stop while scoring leaves the last run's reports whole.
    write_json(REFERENCE_FILE, reference)
    for name, figure in figures.items():
        save_figure(figure, FIGURES_DIR / f"{name}.png")
    write_json(ROBUSTNESS_FILE, robust)
    write_json(METRICS_FILE, result)
    experiment = tracking.setup(params.mlflow)
    with tracking.stage_run("evaluate", experiment.experiment_id, load_run_id()):
        edges = {key: band_edge(result[key]) for key in ("real_below", "fake_above")}
        mlflow.log_metrics(_measured({"threshold": result["threshold"], **edges}))
        for split in ("val", "test"):
            mlflow.log_metrics({f"{split}_{k}": v for k, v in result[split].items() if isinstance(v, float)})
            mlflow.log_metrics(_measured({f"{split}_band_{k}": v for k, v in result["bands"][split].items()}))
        for when, values in result["calibration"]["test"].items():
            mlflow.log_metrics({f"test_{k}_{when}_calibration": v for k, v in values.items()})
        mlflow.log_artifact(str(METRICS_FILE), "evaluation")
        extra_sets.log_to_mlflow(result["extra_sets"])
        robustness.log_to_mlflow(robust)
        for figure in sorted(FIGURES_DIR.glob("*.png")):
            mlflow.log_artifact(str(figure), "figures")
    test, bands, calibration = result["test"], result["bands"]["test"], result["calibration"]
    log.info(
        "evaluate done: threshold %.4f, bands REAL <= %s / FAKE >= %s (from validation); test "
        "accuracy %.4f, ROC-AUC %s, F1 %.4f; bands decide %.1f%% at accuracy %s; ECE %.4f -> %.4f "
        "(T %.3f, b %.3f)",
        result["threshold"],
        band_edge_text(result["real_below"]),
        band_edge_text(result["fake_above"]),
        test["accuracy"],
        format_metric(test["roc_auc"]),
        test["f1"],
        100 * bands["coverage"],
        format_metric(bands["decided_accuracy"]),
        calibration["test"]["before"]["ece"],
        calibration["test"]["after"]["ece"],
        calibration["temperature"],
        calibration["bias"],
    )
    return result


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.evaluate``."""
    return run_stage("evaluate", _main, stage_parser("evaluate", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
