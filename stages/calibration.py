"""Calibration: fit it on validation and build it into the saved model (train's hook).

Two methods, both monotone in the score (ranking and ROC-AUC unchanged), both one layer
(core.layers.Temperature):

- ``temperature``: ``sigmoid(logit(p) / T)``, one parameter, fitted over ``log T``;
- ``platt``: ``sigmoid(logit(p) / T + b)``, two parameters (Platt scaling of the logit), fitted over
  ``(log T, b)``; it also moves the scores' centre, which a temperature cannot.

Each minimises the validation negative log-likelihood, where ``p`` is the trained (flip-averaged) model's
P(FAKE). Test data never reaches this module: evaluate measures the result on test afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from core.config import CalibrationParams
from core.modelstore import load_keras, predict_fake_probability

log = logging.getLogger(__name__)

EPSILON = 1e-7  # the clip of core.layers.Temperature: the same logits here and in the saved model
# Bounds of log T: T from ~0.02 to ~55, far wider than any useful temperature, so the bound never binds.
LOG_T_BOUNDS = (-4.0, 4.0)


def logit(probabilities: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of the clipped probabilities (float64), as core.layers.Temperature computes it."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """``sigmoid(logit(p) / T + bias)``: the numpy twin of core.layers.Temperature."""
    return expit(logit(probabilities) / temperature + bias)


def negative_log_likelihood(
    labels: np.ndarray, logits: np.ndarray, temperature: float, bias: float = 0.0
) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / T + bias)`` against 0/1 labels (in log space)."""
    z = np.asarray(logits, dtype=np.float64) / temperature + bias
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * log_expit(z) + (1.0 - y) * log_expit(-z)))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``probabilities`` (validation scores) against ``labels``.

    Args:
        labels: Validation labels, FAKE = 1.
        probabilities: The uncalibrated model's validation P(FAKE).

    Returns:
        T > 0; above 1 when the model was over-confident, below 1 when it was under-confident.
    """
    logits = logit(probabilities)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, logits, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def fit_platt(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """Platt scaling of the logit: the ``(T, bias)`` that minimise the NLL of ``probabilities`` on ``labels``.

    Started from the best temperature (bias 0), so it is never worse than temperature scaling on validation.

    Returns:
        ``(T, bias)`` with ``T > 0`` (the slope ``1 / T`` stays positive: ranking unchanged).
    """
    logits = logit(probabilities)
    start = np.array([np.log(fit_temperature(labels, probabilities)), 0.0])
    result = minimize(
        lambda x: negative_log_likelihood(labels, logits, float(np.exp(x[0])), float(x[1])),
        start,
        method="L-BFGS-B",
        bounds=[LOG_T_BOUNDS, (-10.0, 10.0)],
    )
    return float(np.exp(result.x[0])), float(result.x[1])


def calibrate_saved_model(
    model_file: Path, val_x: np.ndarray, val_y: np.ndarray, params: CalibrationParams
) -> dict[str, float | str]:
    """Fit the calibration on validation and save ``model_file`` again with it as the output layer.

    Args:
        model_file: The trained ``.keras`` file; replaced in place (train writes it inside its atomic folder).
        val_x: Validation images, uint8 ``(N, H, W, 3)``.
        val_y: Validation labels, FAKE = 1.
        params: The ``calibration`` section of params.yaml.

    Returns:
        Flat facts for reports/training.json and the MLflow run: the method, the temperature, the bias (0 for
        temperature scaling) and the validation NLL before and after (equal, with T = 1, when disabled).
    """
    from core.layers import with_temperature

    model = load_keras(model_file)
    labels = np.asarray(val_y)
    probabilities = predict_fake_probability(model, val_x)
    before = negative_log_likelihood(labels, logit(probabilities), 1.0)
    if not params.enabled:
        log.info("calibration disabled: validation NLL %.4f, model saved without a temperature", before)
        return {
            "calibration_method": "none",
            "temperature": 1.0,
            "calibration_bias": 0.0,
            "val_nll_before_calibration": before,
            "val_nll_after_calibration": before,
        }
    if params.method == "platt":
        temperature, bias = fit_platt(labels, probabilities)
    else:
        temperature, bias = fit_temperature(labels, probabilities), 0.0
    after = negative_log_likelihood(labels, logit(probabilities), temperature, bias)
    with_temperature(model, temperature, bias).save(model_file)
    log.info(
        "calibration (%s): temperature %.4f, bias %.4f fitted on %d validation images; "
        "validation NLL %.4f -> %.4f",
        params.method,
        temperature,
        bias,
        len(labels),
        before,
        after,
    )
    return {
        "calibration_method": params.method,
        "temperature": temperature,
        "calibration_bias": bias,
        "val_nll_before_calibration": before,
        "val_nll_after_calibration": after,
    }
