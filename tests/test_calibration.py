"""Calibration and verdict bands: temperature or Platt on validation, band edges, on to the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from core.config import CalibrationParams, ConfigError, load_params
from core.labels import EMPTY_FAKE_BAND, EMPTY_REAL_BAND, band_edge, verdicts
from core.metrics import band_metrics, calibration_metrics
from core.modelstore import load_keras, predict_fake_probability
from stages.calibration import (
    apply_temperature,
    calibrate_saved_model,
    fit_platt,
    fit_temperature,
    logit,
    negative_log_likelihood,
)
from stages.evaluate import choose_bands, choose_threshold
from stages.register import edge_tag

REPO = Path(__file__).resolve().parents[1]
OVERCONFIDENCE = 5.0  # the test model's logits are this many times the true log-odds
SHIFT = 2.0  # the shifted test model's logits are the true log-odds plus this


def _overconfident(seed: int, count: int, scale: float = OVERCONFIDENCE, shift: float = 0.0):
    """A model whose logit is ``scale`` x the true log-odds (+ ``shift``), and labels drawn from the truth.

    The image's mean brightness m sets the true log-odds 8 (m - 0.5); the model outputs
    ``sigmoid(scale * 8 (m - 0.5) + shift)``: right ranking, far too sure (or shifted towards FAKE).
    Returns ``(keras.Model, images, labels)``.
    """
    import keras

    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0.0, 1.0, count)
    images = np.clip(brightness[:, None, None, None] * 255 + rng.normal(0, 2, (count, 4, 4, 3)), 0, 255)
    images = images.round().astype(np.uint8)
    truth = 8.0 * (images.mean(axis=(1, 2, 3)) / 255.0 - 0.5)
    labels = (rng.uniform(size=count) < expit(truth)).astype(np.int64)
    inputs = keras.Input((4, 4, 3), dtype="uint8", name="image")
    h = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    dense = keras.layers.Dense(1, activation="sigmoid", name="fake_probability")
    model = keras.Model(inputs, dense(h), name="Overconfident")
    slope = scale * 8.0
    dense.set_weights([np.full((3, 1), slope / 3, np.float32), np.array([shift - slope / 2], np.float32)])
    return model, images, labels


def test_temperature_lowers_validation_nll_of_an_overconfident_model() -> None:
    model, val_x, val_y = _overconfident(seed=0, count=4000)
    raw = predict_fake_probability(model, val_x)
    temperature = fit_temperature(val_y, raw)
    assert temperature == pytest.approx(OVERCONFIDENCE, rel=0.15), "it undoes the x5 over-confidence"
    before = negative_log_likelihood(val_y, logit(raw), 1.0)
    after = negative_log_likelihood(val_y, logit(raw), temperature)
    assert after < before - 0.1
    # Fitted T is the minimum: both neighbours are worse.
    assert after < negative_log_likelihood(val_y, logit(raw), temperature * 1.1)
    assert after < negative_log_likelihood(val_y, logit(raw), temperature / 1.1)
    # ... and it carries to held-out data drawn the same way: lower ECE, Brier and NLL.
    _, test_x, test_y = _overconfident(seed=1, count=4000)
    test_raw = predict_fake_probability(model, test_x)
    uncalibrated = calibration_metrics(test_y, test_raw, bins=10)
    calibrated = calibration_metrics(test_y, apply_temperature(test_raw, temperature), bins=10)
    assert calibrated["ece"] < uncalibrated["ece"] / 2
    assert calibrated["brier"] < uncalibrated["brier"] and calibrated["nll"] < uncalibrated["nll"]


def test_saved_model_outputs_sigmoid_of_logit_over_t(tmp_path: Path) -> None:
    from core.layers import Temperature, temperature_of, without_temperature

    model, val_x, val_y = _overconfident(seed=2, count=2000)
    path = tmp_path / "model.keras"
    model.save(path)
    raw = predict_fake_probability(model, val_x)
    facts = calibrate_saved_model(path, val_x, val_y, CalibrationParams(enabled=True, method="temperature"))
    temperature = facts["temperature"]
    assert temperature == pytest.approx(fit_temperature(val_y, raw))
    assert facts["val_nll_after_calibration"] < facts["val_nll_before_calibration"]

    loaded = load_keras(path)  # the format round trip: core.layers registers Temperature
    assert isinstance(loaded.layers[-1], Temperature)
    assert loaded.output_names == ["fake_probability"] and loaded.input_shape == (None, 4, 4, 3)
    assert temperature_of(loaded) == pytest.approx(temperature)
    served = predict_fake_probability(loaded, val_x)
    z = np.log(np.clip(raw, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(raw, 1e-7, 1 - 1e-7))
    np.testing.assert_allclose(served, expit(z / temperature), atol=1e-5, rtol=0)
    assert np.ptp(served - raw) > 0.05, "the temperature changed the scores"
    # Stripping the temperature gives back the uncalibrated scores (evaluate's "before").
    np.testing.assert_allclose(predict_fake_probability(without_temperature(loaded), val_x), raw, atol=1e-6)
    assert temperature_of(without_temperature(loaded)) == 1.0


def test_platt_undoes_a_shift_that_a_temperature_cannot(tmp_path: Path) -> None:
    from core.layers import calibration_bias_of, temperature_of

    model, val_x, val_y = _overconfident(seed=4, count=4000, scale=1.0, shift=SHIFT)
    raw = predict_fake_probability(model, val_x)
    temperature, bias = fit_platt(val_y, raw)
    assert bias == pytest.approx(-SHIFT, abs=0.25) and temperature == pytest.approx(1.0, rel=0.15)
    platt_nll = negative_log_likelihood(val_y, logit(raw), temperature, bias)
    assert platt_nll < negative_log_likelihood(val_y, logit(raw), fit_temperature(val_y, raw)) - 0.05

    path = tmp_path / "model.keras"
    model.save(path)
    facts = calibrate_saved_model(path, val_x, val_y, CalibrationParams(enabled=True, method="platt"))
    assert (facts["temperature"], facts["calibration_bias"]) == pytest.approx((temperature, bias))
    loaded = load_keras(path)
    assert temperature_of(loaded) == pytest.approx(temperature) and calibration_bias_of(
        loaded
    ) == pytest.approx(bias)
    # The saved output is sigmoid(logit / T + b): fails if the bias is dropped, added to p, or its sign flips.
    np.testing.assert_allclose(
        predict_fake_probability(loaded, val_x), expit(logit(raw) / temperature + bias), atol=1e-5, rtol=0
    )
    _, test_x, test_y = _overconfident(seed=5, count=4000, scale=1.0, shift=SHIFT)
    test_raw = predict_fake_probability(model, test_x)
    calibrated = calibration_metrics(test_y, predict_fake_probability(loaded, test_x), bins=10)
    assert calibrated["ece"] < calibration_metrics(test_y, test_raw, bins=10)["ece"] / 2


def test_disabled_calibration_leaves_the_model_alone(tmp_path: Path) -> None:
    from core.layers import temperature_of

    model, val_x, val_y = _overconfident(seed=3, count=500)
    path = tmp_path / "model.keras"
    model.save(path)
    facts = calibrate_saved_model(path, val_x, val_y, CalibrationParams(enabled=False, method="temperature"))
    assert facts["temperature"] == 1.0 and facts["calibration_method"] == "none"
    assert temperature_of(load_keras(path)) == 1.0


def test_an_unknown_calibration_method_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("method: platt", "method: isotonic"))
    with pytest.raises(ConfigError, match=r"calibration\.method"):
        load_params(path)
    assert load_params(REPO / "params.yaml").evaluation.band_precision == 0.99


def _scores(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    return labels, expit(rng.normal(1.5 * (2 * labels - 1), 2.0)).astype(np.float32)


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_bands_reach_the_precision_on_validation_and_are_the_widest_that_do(target: float) -> None:
    labels, probabilities = _scores(seed=4, count=3000)
    threshold = 0.5
    real_below, fake_above = choose_bands(labels, probabilities, threshold, target)
    assert 0.0 < real_below < threshold < fake_above < 1.0
    result = band_metrics(labels, probabilities, real_below, fake_above)
    assert result["real_precision"] >= target and result["fake_precision"] >= target
    assert 0.0 < result["coverage"] < 1.0
    # One more validation score in either band would bring it below the target: the bands are the widest.
    wider_real = np.min(probabilities[probabilities > real_below])
    wider_fake = np.max(probabilities[probabilities < fake_above])
    assert band_metrics(labels, probabilities, wider_real, fake_above)["real_precision"] < target
    assert band_metrics(labels, probabilities, real_below, wider_fake)["fake_precision"] < target


def test_bands_on_a_known_example() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1])
    probabilities = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.75, 0.8, 0.9])
    assert choose_bands(labels, probabilities, 0.5, 0.99) == (0.2, 0.8)
    # At 0.75 precision the REAL band takes 0.4 (4 REAL of 5) and the FAKE band 0.6 (4 FAKE of 5).
    assert choose_bands(labels, probabilities, 0.5, 0.75) == (0.4, 0.6)
    result = band_metrics(labels, probabilities, 0.2, 0.8)
    assert result["coverage"] == pytest.approx(0.5) and result["decided_accuracy"] == 1.0
    assert verdicts(probabilities, 0.2, 0.8).count("UNCERTAIN") == 5


def test_a_score_at_the_threshold_is_never_in_the_real_band_and_may_open_the_fake_band() -> None:
    """The binary rule calls p == threshold FAKE (core.labels.decide): the bands must agree with it."""
    probabilities = np.array([0.1, 0.2, 0.3, 0.5, 0.8, 0.9])
    assert choose_bands(np.array([0, 0, 0, 0, 1, 1]), probabilities, 0.5, 0.99) == (0.3, 0.8)
    assert choose_bands(np.array([0, 0, 0, 1, 1, 1]), probabilities, 0.5, 0.99) == (0.3, 0.5)


def test_a_band_no_edge_makes_precise_enough_is_empty() -> None:
    labels = np.array([1, 0, 0, 1, 1, 0])  # the most confident score on each side is wrong
    probabilities = np.array([0.01, 0.2, 0.3, 0.7, 0.8, 0.99])
    real_below, fake_above = choose_bands(labels, probabilities, 0.5, 0.99)
    assert (real_below, fake_above) == (EMPTY_REAL_BAND, EMPTY_FAKE_BAND)
    assert (band_edge(real_below), band_edge(fake_above)) == (None, None)
    assert band_metrics(labels, probabilities, real_below, fake_above)["coverage"] == 0.0


def test_an_empty_band_decides_nothing_even_a_saturated_score() -> None:
    """A calibrated float32 P(FAKE) can be exactly 0.0 or 1.0: an empty band must not decide it either.

    With the empty bands' edges at 0.0 and 1.0, these two scores were called REAL and FAKE, at a precision
    nobody measured (validation found none that reached band_precision).
    """
    labels = np.array([1, 0, 0, 1, 1, 0])
    saturated = np.array([0.0, 0.2, 0.3, 0.7, 0.8, 1.0], dtype=np.float32)
    real_below, fake_above = choose_bands(labels, saturated, 0.5, 0.99)
    assert verdicts(saturated, real_below, fake_above) == ["UNCERTAIN"] * 6
    result = band_metrics(labels, saturated, real_below, fake_above)
    assert (result["coverage"], result["real_coverage"], result["fake_coverage"]) == (0.0, 0.0, 0.0)


def test_band_metrics_of_an_empty_band_are_strict_json() -> None:
    """No value is None (null), never NaN: ``NaN`` in metrics.json is refused by jq, JSON.parse and Go."""
    labels = np.array([1, 0, 0, 1, 1, 0])
    probabilities = np.array([0.01, 0.2, 0.3, 0.7, 0.8, 0.99])
    result = band_metrics(labels, probabilities, *choose_bands(labels, probabilities, 0.5, 0.99))
    assert result["real_precision"] is None and result["fake_precision"] is None
    assert result["decided_accuracy"] is None
    nothing = band_metrics(np.array([], dtype=int), np.array([]), 0.3, 0.7)
    assert nothing["count"] == 0 and all(v is None for k, v in nothing.items() if k != "count")
    json.dumps([result, nothing], allow_nan=False)


def test_pipeline_fits_t_on_validation_and_registers_the_bands(trained_workspace) -> None:
    """The real pipeline run (tests/conftest.py): Platt on validation only; the edges reach the registry."""
    import mlflow

    from core.layers import calibration_bias_of, temperature_of, without_temperature
    from core.modelstore import download_model, read_metadata
    from stages.shards import load_split

    root = trained_workspace.root
    training = json.loads((root / "reports/training.json").read_text())
    metrics = json.loads((root / "reports/metrics.json").read_text())
    model = load_keras(root / "models/model.keras")
    assert training["calibration_method"] == "platt"
    fitted_here = (training["temperature"], training["calibration_bias"])
    assert (temperature_of(model), calibration_bias_of(model)) == pytest.approx(fitted_here)
    assert (metrics["calibration"]["temperature"], metrics["calibration"]["bias"]) == pytest.approx(
        fitted_here
    )
    uncalibrated = without_temperature(model)
    fitted = {}
    for split in ("val", "test"):
        images, labels = load_split(root / "data/processed", split)
        fitted[split] = fit_platt(np.asarray(labels), predict_fake_probability(uncalibrated, images))
    assert fitted_here == pytest.approx(fitted["val"], rel=1e-3, abs=1e-3)
    assert fitted["test"] != pytest.approx(fitted["val"], rel=1e-3), "T, b would differ if fitted on test"
    assert training["val_nll_after_calibration"] <= training["val_nll_before_calibration"]
    # The threshold and the band edges are chosen on validation too, with the calibrated scores.
    chosen = {}
    for split in ("val", "test"):
        images, labels = load_split(root / "data/processed", split)
        labels, scores = np.asarray(labels), predict_fake_probability(model, images)
        threshold = choose_threshold(labels, scores, metrics["threshold_metric"])
        chosen[split] = (threshold, *choose_bands(labels, scores, threshold, metrics["band_precision"]))
    assert (metrics["threshold"], metrics["real_below"], metrics["fake_above"]) == pytest.approx(
        chosen["val"]
    )
    assert chosen["test"][0] != pytest.approx(chosen["val"][0]), (
        "the threshold would differ if chosen on test"
    )
    assert chosen["test"][1:] != pytest.approx(chosen["val"][1:]), "so would the bands"

    assert metrics["real_below"] <= metrics["threshold"] <= metrics["fake_above"]
    val_bands = metrics["bands"]["val"]
    for band in ("real", "fake"):
        if val_bands[f"{band}_coverage"] > 0:
            assert val_bands[f"{band}_precision"] >= metrics["band_precision"]
    before, after = metrics["calibration"]["test"]["before"], metrics["calibration"]["test"]["after"]
    assert {"ece", "brier", "nll"} <= before.keys() and after["ece"] == pytest.approx(metrics["test"]["ece"])

    client = mlflow.MlflowClient(tracking_uri=trained_workspace.tracking_uri)
    champion = client.get_model_version_by_alias(trained_workspace.model_name, "champion")
    for key in ("real_below", "fake_above"):
        assert champion.tags[key] == edge_tag(metrics[key])
    assert float(champion.tags["temperature"]) == pytest.approx(training["temperature"], abs=1e-6)
    assert float(champion.tags["calibration_bias"]) == pytest.approx(training["calibration_bias"], abs=1e-6)
    mlflow.set_tracking_uri(trained_workspace.tracking_uri)
    metadata = read_metadata(download_model(f"models:/{trained_workspace.model_name}/{champion.version}"))
    assert metadata.bands == (metrics["real_below"], metrics["fake_above"])
    assert metadata.temperature == pytest.approx(training["temperature"])
    assert metadata.calibration_bias == pytest.approx(training["calibration_bias"])
    run = client.get_run(champion.run_id)
    assert run.data.metrics["train_temperature"] == pytest.approx(training["temperature"])
    # docs/pipeline.md: the MLflow run records the method too (a text, which the train_* metrics left out).
    assert run.data.params["calibration_method"] == training["calibration_method"]
    assert "test_ece_before_calibration" in run.data.metrics and "val_band_coverage" in run.data.metrics
    # ... and names the run's metrics as they are (it named them without train_: no search found them).
    doc = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text()
    for key in ("temperature", "calibration_bias", "val_nll_before_calibration"):
        assert run.data.metrics[f"train_{key}"] == pytest.approx(training[key]) and f"`train_{key}`" in doc
