"""The robustness report: test metrics under each degradation an upload goes through (core/degrade.py).

Each sampled test image is turned into the file a user would upload after a degradation (re-saved JPEG,
enlarged PNG, blur, ...), decoded the way the predictor decodes uploads and scored with the same threshold.
evaluate calls :func:`measure` and writes ``reports/robustness.json`` and ``reports/figures/robustness.png``
with its other outputs.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from core.config import EvaluationParams
from core.degrade import DEGRADATIONS, degrade
from core.labels import decide
from core.metrics import format_metric, outcome_metrics
from core.modelstore import predict_fake_probability
from core.pipeline import PROCESSED_DIR, ROBUSTNESS_FILE
from stages.figures import plt
from stages.shards import load_split

log = logging.getLogger(__name__)

CLEAN = "clean"
# Metrics averaged over the degradations (clean excluded): what register's robustness gate compares.
MEAN_METRICS: tuple[str, ...] = ("accuracy", "roc_auc")
SAMPLE_SEED = 0  # fixed, so the champion and a challenger are measured on the same images


def sample_indices(labels: np.ndarray, per_class: int | None, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Up to ``per_class`` indices of each class drawn at random (all when None), sorted.

    Args:
        labels: Integer labels.
        per_class: Images per class, or None for every image.
        seed: The draw's seed.

    Returns:
        Sorted indices into ``labels``.
    """
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def robustness_report(model, images: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Score ``images`` under every degradation of :data:`core.degrade.DEGRADATIONS` with one threshold.

    Args:
        model: A Keras model taking uint8 images.
        images: uint8 ``(N, H, W, 3)`` model-size images.
        labels: Their integer labels.
        threshold: The decision threshold (FAKE at or above it).

    Returns:
        ``{"threshold", "degradations": {name: {"accuracy", "roc_auc", "flipped", "fake_called_real",
        "count"}}, "degraded_mean": {"accuracy", "roc_auc"}}``; ``flipped`` is the share of images whose
        decision differs from the one on the clean image.
    """
    labels = np.asarray(labels)
    clean_decision = None
    degradations: dict[str, dict] = {}
    for name in (CLEAN, *(name for name in DEGRADATIONS if name != CLEAN)):
        started = time.perf_counter()
        probabilities = predict_fake_probability(model, degrade(np.asarray(images), name))
        decision = decide(probabilities, threshold)
        if clean_decision is None:
            clean_decision = decision
        scores = outcome_metrics(labels, probabilities, threshold)
        degradations[name] = {
            "accuracy": scores["accuracy"],
            "roc_auc": scores["roc_auc"],
            "flipped": float(np.mean(decision != clean_decision)) if len(labels) else None,
            "fake_called_real": scores["fake_called_real"],
            "count": scores["count"],
        }
        log.info(
            "robustness %-15s accuracy %s, flipped %s (%d images, %.1f s)",
            name,
            format_metric(scores["accuracy"]),
            format_metric(degradations[name]["flipped"]),
            len(labels),
            time.perf_counter() - started,
        )
    degraded = [scores for name, scores in degradations.items() if name != CLEAN]
    mean = {
        metric: float(np.mean([s[metric] for s in degraded]))
        if all(s[metric] is not None for s in degraded)
        else None
        for metric in MEAN_METRICS
    }
    return {"threshold": float(threshold), "degradations": degradations, "degraded_mean": mean}


def figure(report: dict) -> plt.Figure:
    """Bars per degradation: accuracy and ROC-AUC; shares of flipped decisions and of fakes called REAL."""
    names = list(report["degradations"])
    rows = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.35 * len(names) + 1.6), sharey=True)
    for ax, metrics in ((left, ("accuracy", "roc_auc")), (right, ("flipped", "fake_called_real"))):
        for i, metric in enumerate(metrics):
            values = [report["degradations"][name][metric] or 0.0 for name in names]
            ax.barh(rows + (i - 0.5) * 0.4, values, height=0.4, label=metric)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    left.set_xlim(0.0, 1.0)
    left.set_yticks(rows, names)
    left.invert_yaxis()  # clean on top
    shares = [report["degradations"][n][m] or 0.0 for n in names for m in ("flipped", "fake_called_real")]
    right.set_xlim(0.0, max(0.05, 1.15 * max(shares)))  # small shares stay readable
    mean = report["degraded_mean"]
    fig.suptitle(
        f"Robustness at threshold {report['threshold']:.3f}: degraded mean accuracy "
        f"{format_metric(mean['accuracy'])}, ROC-AUC {format_metric(mean['roc_auc'])}"
    )
    return fig


def log_to_mlflow(report: dict) -> None:
    """Log the report to the active MLflow run: metrics ``robust_<degradation>_<metric>`` and the degraded
    means as ``degraded_mean_<metric>``, and the JSON file itself (the figure is logged with evaluate's)."""
    import mlflow

    metrics = {
        f"robust_{name}_{metric}": value
        for name, scores in report["degradations"].items()
        for metric, value in scores.items()
        if metric != "count" and value is not None
    }
    metrics.update({f"degraded_mean_{k}": v for k, v in report["degraded_mean"].items() if v is not None})
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(ROBUSTNESS_FILE), "evaluation")


def measure(model, threshold: float, params: EvaluationParams) -> dict:
    """The robustness report of the test split, sampled per ``params.robustness_sample`` (evaluate writes it
    to reports/robustness.json and :func:`figure` to its plot).

    Args:
        model: The model evaluate scores.
        threshold: evaluate's threshold, chosen on validation.
        params: The evaluation parameters.

    Returns:
        The content of reports/robustness.json.
    """
    images, labels = load_split(PROCESSED_DIR, "test")
    chosen = sample_indices(np.asarray(labels), params.robustness_sample)
    started = time.perf_counter()
    report = robustness_report(model, np.asarray(images[chosen]), np.asarray(labels)[chosen], threshold)
    log.info(
        "robustness report: %d test images x %d degradations in %.1f s; degraded mean accuracy %s, AUC %s",
        len(chosen),
        len(report["degradations"]),
        time.perf_counter() - started,
        format_metric(report["degraded_mean"]["accuracy"]),
        format_metric(report["degraded_mean"]["roc_auc"]),
    )
    return report
