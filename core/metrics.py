"""Classification metrics, FAKE positive: what evaluate reports and register's gate compares."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from core.labels import FAKE, REAL, decide


def format_metric(value: Any) -> str:
    """A metric for a reader (log line, plot title, model card): floats to four places, integers as they are,
    "n/a" where it is undefined (``None``: e.g. ROC-AUC of one class), anything else as its text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Mean |observed FAKE rate - mean predicted probability| over equal-width bins, weighted by count."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(labels[mask].mean() - probabilities[mask].mean())
    return float(error)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, calibration_bins: int = 10
) -> dict:
    """Accuracy, precision, recall, F1 (FAKE positive), ROC-AUC, PR-AUC, Brier, ECE, confusion matrix.

    ROC-AUC and PR-AUC are None (JSON null) when only one class is present: they have no value then.
    """
    predicted = decide(probabilities, threshold)
    two_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, pos_label=FAKE, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, pos_label=FAKE, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, pos_label=FAKE, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if two_classes else None,
        "pr_auc": float(skm.average_precision_score(labels, probabilities)) if two_classes else None,
        "brier": float(skm.brier_score_loss(labels, probabilities)),
        "ece": expected_calibration_error(labels, probabilities, calibration_bins),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        "count": int(len(labels)),
    }


def outcome_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """What each degradation and extra set reports: accuracy, ROC-AUC, fakes called REAL, count.

    Args:
        labels: Integer labels (FAKE = 1).
        probabilities: P(FAKE) per image.
        threshold: FAKE at or above it.

    Returns:
        ``accuracy``; ``roc_auc`` (None when only one class is present); ``fake_called_real``, the share of
        FAKE images decided REAL (None without FAKE images): the miss that matters most to a user; ``count``.
    """
    labels = np.asarray(labels)
    predicted = decide(probabilities, threshold)
    fakes = labels == FAKE
    return {
        "accuracy": float(np.mean(predicted == labels)) if len(labels) else None,
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else None,
        "fake_called_real": float(np.mean(predicted[fakes] != FAKE)) if fakes.any() else None,
        "count": int(len(labels)),
    }


def calibration_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict[str, float]:
    """How far P(FAKE) can be read as a probability: ECE (equal-width bins), Brier score and log loss (NLL).

    Args:
        labels: 0/1 labels, FAKE = 1.
        probabilities: P(FAKE) per image.
        bins: Number of equal-width ECE bins.

    Returns:
        ``{"ece", "brier", "nll"}``; lower is better for all three.
    """
    return {
        "ece": expected_calibration_error(labels, probabilities, bins),
        "brier": float(skm.brier_score_loss(labels, probabilities)),
        "nll": float(skm.log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])),
    }


def band_metrics(
    labels: np.ndarray, probabilities: np.ndarray, real_below: float, fake_above: float
) -> dict[str, float | int | None]:
    """What the three-way verdict (core.labels.verdicts) does on labelled data.

    Args:
        labels: 0/1 labels, FAKE = 1.
        probabilities: P(FAKE) per image.
        real_below: REAL at or below this score.
        fake_above: FAKE at or above this score (``real_below < fake_above`` in any band that decides); an
            empty band's edge lies outside [0, 1] (core.labels.EMPTY_REAL_BAND, EMPTY_FAKE_BAND).

    Returns:
        ``coverage`` (share decided), ``decided_accuracy`` (accuracy on that share), ``real_precision`` and
        ``fake_precision`` (share of true REAL/FAKE in each band), ``real_coverage``, ``fake_coverage``
        (share of all images in each band) and ``count``. A value with nothing to measure (the precision of
        a band no image falls in, any share of zero images) is None, JSON's null: a report stays strict JSON.
    """
    labels = np.asarray(labels)
    p = np.asarray(probabilities)
    real, fake = p <= real_below, p >= fake_above
    real &= ~fake  # only if the edges crossed (evaluate never does): FAKE wins, as in core.labels.verdicts

    def share(mask: np.ndarray, label: int) -> float | None:
        return float(np.mean(labels[mask] == label)) if mask.any() else None

    decided = real | fake
    correct = np.count_nonzero(real & (labels == REAL)) + np.count_nonzero(fake & (labels == FAKE))
    return {
        "coverage": float(decided.mean()) if len(p) else None,
        "decided_accuracy": correct / np.count_nonzero(decided) if decided.any() else None,
        "real_precision": share(real, REAL),
        "fake_precision": share(fake, FAKE),
        "real_coverage": float(real.mean()) if len(p) else None,
        "fake_coverage": float(fake.mean()) if len(p) else None,
        "count": int(len(p)),
    }
