"""The predictor's small calls on LiteRT: the champion's Keras scores, and Keras alone where LiteRT fails."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from core.imaging import decode_for_model
from core.modelstore import download_model, predict_fake_probability
from serving import litert
from serving.model import ServedModel, load_served_model

REPO = Path(__file__).resolve().parents[2]


def _load_champion(registered_model, dest: Path) -> ServedModel:
    """The pipeline's champion loaded the way the predictor loads it (from its model folder)."""
    import mlflow

    mlflow.set_tracking_uri(registered_model.tracking_uri)
    return load_served_model(str(download_model(f"models:/deepguard/{registered_model.version}", dest)))


@pytest.fixture(scope="module")
def champion(registered_model, tmp_path_factory) -> ServedModel:
    return _load_champion(registered_model, tmp_path_factory.mktemp("m"))


class _Counting:
    """Wraps a scorer and counts its calls."""

    def __init__(self, scorer) -> None:
        self.scorer, self.calls = scorer, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.scorer(images)


def test_small_calls_of_the_champion_are_scored_by_litert_as_keras_scores_them(champion, sample_images):
    assert champion.litert is not None
    images = np.stack([decode_for_model(f, champion.metadata.image_size) for f in sample_images.probe])
    counting = _Counting(champion.litert)
    served = dataclasses.replace(champion, litert=counting)
    for count in range(1, litert.MAX_BATCH + 2):
        probabilities, labels = served.score(images[:count])
        expected = predict_fake_probability(champion.keras_model, images[:count])
        np.testing.assert_allclose(probabilities, expected, atol=litert.TOLERANCE, rtol=0)
        assert probabilities.dtype == np.float32 and len(labels) == count
    # One LiteRT call per size up to MAX_BATCH; the larger call went to Keras.
    assert counting.calls == litert.MAX_BATCH
    served.score(images[:0])
    assert counting.calls == litert.MAX_BATCH


def test_a_fresh_load_names_its_runtime_and_keras_is_traced_for_the_calls_litert_does_not_take(
    registered_model, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="serving.model"):
        served = _load_champion(registered_model, tmp_path)  # fresh: no call after the load has traced
    assert f"scored by LiteRT for up to {litert.MAX_BATCH} images" in caplog.text
    traced = served.keras_model.predict_function.experimental_get_tracing_count()
    for count in (litert.MAX_BATCH + 1, 7, 33, 300):
        served.score(np.zeros((count, 32, 32, 3), dtype=np.uint8))
    assert served.keras_model.predict_function.experimental_get_tracing_count() == traced


def _spectrum_network():  # -> keras.Model: the spectrum branch's complex FFT has no LiteRT kernel
    from core.config import load_params
    from core.layers import with_flip_averaging
    from stages.architectures import build_model

    return with_flip_averaging(
        build_model(
            "SimpleCNN",
            image_size=32,
            dropout=0.1,
            pretrained_weights="none",
            augmentation=load_params(REPO / "params.yaml").augmentation,  # training-only layers
            mean=[0.5] * 3,
            variance=[0.06] * 3,
            seed=0,
            spectrum_branch=True,
        )
    )


def test_a_network_litert_cannot_take_is_served_by_keras_alone(champion):
    network = _spectrum_network()
    scorer, runtime = litert.convert(network, 32)
    assert scorer is None
    assert runtime.startswith("Keras alone (LiteRT cannot take this network: ")
    served = dataclasses.replace(champion, keras_model=network, litert=scorer, explainer=None)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(served.score(images)[0], predict_fake_probability(network, images))


@pytest.mark.parametrize("shift", [1e-3, float("nan")])
def test_litert_is_not_used_when_its_scores_differ_from_keras(champion, monkeypatch, shift):
    def keras_disagrees(model, images):
        return predict_fake_probability(model, images) + np.float32(shift)

    monkeypatch.setattr(litert, "predict_fake_probability", keras_disagrees)
    scorer, runtime = litert.convert(champion.keras_model, champion.metadata.image_size)
    assert scorer is None
    assert runtime == f"Keras alone (LiteRT's scores differ from Keras' by up to {shift:.1e})"


def test_the_tiny_test_model_converts_with_its_weights(tiny_model, sample_images):
    # A model built and trained in this process, its weights in variables: a conversion that left them out
    # scored NaN (the predictor's metrics tests caught it).
    scorer, runtime = litert.convert(tiny_model, 32)
    assert scorer is not None, runtime
    images = np.stack([decode_for_model(f, 32) for f in sample_images.probe[: litert.MAX_BATCH]])
    np.testing.assert_allclose(
        scorer(images), predict_fake_probability(tiny_model, images), atol=litert.TOLERANCE, rtol=0
    )
