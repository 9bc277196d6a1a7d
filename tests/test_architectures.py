"""Unit tests for stages.architectures: every model builds, learns, scores uint8 images and round-trips."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import get_args

import keras
import numpy as np
import pytest
from workspace import all_layers

from core import layers
from core.config import NO_AUGMENTATION, Architecture, AugmentationParams
from stages import architectures
from stages.architectures import ARCHITECTURES, PretrainedWeightsError, build_model
from stages.train import cpu_has_amx_bf16

SIZE = 16  # small images keep the whole file fast; transfer models upsample to their backbone minimum
FULL_AUGMENTATION = NO_AUGMENTATION.model_copy(
    update={"horizontal_flip": True, "translate": 0.125, "contrast": 0.3}
)
TRANSFER = ("EfficientNetB0Transfer", "XceptionTransfer")


def _batch(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny uint8 images with an obvious class signal: FAKE (1) images are bright, REAL (0) ones dark."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 190, 60)
    images = np.clip(base + rng.normal(0, 20, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return images, labels.astype(np.float32)


def _stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(axis=0).tolist(), pixels.var(axis=0).tolist()


def _build(architecture: str, augmentation: AugmentationParams = NO_AUGMENTATION, **overrides) -> keras.Model:
    images, _ = _batch()
    mean, variance = _stats(images)
    kwargs = {
        "image_size": SIZE,
        "dropout": 0.1,
        "pretrained_weights": "none",
        "augmentation": augmentation,
        "mean": mean,
        "variance": variance,
        "seed": 7,
    }
    kwargs.update(overrides)
    return build_model(architecture, **kwargs)


def test_architectures_tuple_equals_config_literal_and_each_has_a_builder() -> None:
    assert get_args(Architecture) == ARCHITECTURES
    builders = set(architectures._SCRATCH_BODIES) | set(architectures._BACKBONE_MIN_SIZE)
    assert builders == set(ARCHITECTURES)


def test_the_docs_table_and_params_yaml_name_every_architecture() -> None:
    """A new architecture was added to the code and the config's choices but not to docs/pipeline.md's table
    of models or params.yaml's list of choices, where users pick one; no test said so."""
    repo = Path(__file__).resolve().parents[1]
    docs = (repo / "docs/pipeline.md").read_text().split("### Models", 1)[1].split("\n### ", 1)[0]
    documented = re.findall(r"^\| `(\w+)`(?: \(default\))? \|", docs, flags=re.MULTILINE)
    assert sorted(documented) == sorted(ARCHITECTURES), "docs/pipeline.md, Models: one table row each"
    params = (repo / "params.yaml").read_text().split("\nmodel:", 1)[1].split("architecture:", 1)[0]
    assert [name for name in ARCHITECTURES if name not in re.findall(r"\w+", params)] == [], "params.yaml"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_builds_and_overfits_one_batch(architecture: str) -> None:
    images, labels = _batch()
    model = _build(architecture)
    assert model.name == architecture
    # No XLA: compiling the big backbones with it costs tens of seconds on CPU, longer than the training.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    epochs = 12 if architecture in TRANSFER else 30
    history = model.fit(images, labels, batch_size=16, epochs=epochs, verbose=0).history
    assert history["loss"][-1] < 0.3 * history["loss"][0], history["loss"]
    assert history["accuracy"][-1] == 1.0


def test_output_is_float32_probability_of_shape_n_by_1_for_uint8_input() -> None:
    model = _build("DeepGuardCNN")
    assert model.inputs[0].dtype == "uint8"
    images, _ = _batch(5)
    scores = model.predict(images, verbose=0)
    assert scores.shape == (5, 1)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_output_stays_float32_under_mixed_precision() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _build("DeepGuardCNN")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer(layers.OUTPUT_NAME).dtype_policy.compute_dtype == "float32"
    assert model.outputs[0].dtype == "float32"


def test_the_batch_norm_variant_of_simple_cnn_normalises_every_conv_at_the_same_compute() -> None:
    plain, normalised = _build("SimpleCNN"), _build("SimpleBatchNormCNN")

    def convs(model: keras.Model) -> list[keras.layers.Conv2D]:
        return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert [c.filters for c in convs(normalised)] == [c.filters for c in convs(plain)] == [32, 64, 128]
    assert not any(c.use_bias for c in convs(normalised))  # BatchNorm's offset replaces the bias
    norms = [layer for layer in normalised.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 3
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)


def test_the_vgg_style_variant_of_simple_cnn_doubles_each_stage_s_convs() -> None:
    def convs(model: keras.Model) -> list[int]:
        return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert convs(_build("VGGStyleCNN")) == [32, 32, 64, 64, 128, 128]
    pools = [layer for layer in _build("VGGStyleCNN").layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 3


# The mixed policy training uses on this machine: bfloat16 needs AMX (elsewhere oneDNN may fail on it).
MIXED = "mixed_bfloat16" if cpu_has_amx_bf16() else "mixed_float16"


@pytest.mark.parametrize("architecture", ["VGGStyleCNN", "EfficientNetB0Transfer"])
def test_a_model_built_in_mixed_precision_has_a_float32_copy_with_its_weights(architecture: str) -> None:
    keras.mixed_precision.set_global_policy(MIXED)
    try:
        mixed = _build(architecture, spectrum_branch=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert MIXED in {layer.dtype_policy.name for layer in all_layers(mixed)}
    copy = layers.in_float32(mixed)
    assert {layer.dtype_policy.name for layer in all_layers(copy)} == {"float32"}
    assert [w.path for w in copy.weights] == [w.path for w in mixed.weights]
    for ours, theirs in zip(copy.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = _batch(8)[0]
    # bfloat16 keeps 8 bits of mantissa: the scores agree to about 1 %, not to float32's precision.
    np.testing.assert_allclose(copy.predict(images, verbose=0), mixed.predict(images, verbose=0), atol=0.03)


def test_default_keeps_full_resolution_through_its_first_residual_block() -> None:
    model = _build("DeepGuardCNN")
    first_add = next(layer for layer in model.layers if isinstance(layer, keras.layers.Add))
    assert first_add.output.shape[1:3] == (SIZE, SIZE)


def test_saved_and_reloaded_model_gives_identical_predictions_with_augmentation_inactive(
    tmp_path: Path,
) -> None:
    model = _build("DeepGuardCNN", augmentation=FULL_AUGMENTATION)
    assert model.get_layer("augment_translate") is not None
    images, _ = _batch(8, seed=3)
    first = model.predict(images, verbose=0)
    np.testing.assert_array_equal(first, model.predict(images, verbose=0))
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), first, rtol=0, atol=1e-6)


def test_flip_averaged_model_scores_the_mean_of_image_and_mirror_image() -> None:
    model = _build("DeepGuardCNN")
    averaged = layers.with_flip_averaging(model)
    images, _ = _batch(6, seed=4)
    mirrored = images[:, :, ::-1]
    expected = (model.predict(images, verbose=0) + model.predict(mirrored, verbose=0)) / 2
    scores = averaged.predict(images, verbose=0)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(averaged.predict(mirrored, verbose=0), scores, rtol=0, atol=1e-6)
    assert not np.allclose(model.predict(mirrored, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert averaged.inputs[0].dtype == "uint8" and averaged.outputs[0].dtype == "float32"
    assert averaged.count_params() == model.count_params(), "the wrapper shares the trained weights"


def test_flip_averaged_model_reloads_through_modelstore(tmp_path: Path) -> None:
    from core.modelstore import load_keras

    averaged = layers.with_flip_averaging(_build("DeepGuardCNN"))
    images, _ = _batch(4, seed=5)
    averaged.save(tmp_path / "model.keras")
    reloaded = load_keras(tmp_path / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), averaged.predict(images, verbose=0), rtol=0, atol=1e-6
    )


def test_augmentation_is_active_in_training_mode() -> None:
    model = _build("DeepGuardCNN", augmentation=FULL_AUGMENTATION)
    images, _ = _batch(8, seed=4)
    train_a = keras.ops.convert_to_numpy(model(images, training=True))
    train_b = keras.ops.convert_to_numpy(model(images, training=True))
    assert not np.allclose(train_a, train_b)


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        _build("ResNet9000")


@pytest.mark.parametrize("architecture", TRANSFER)
def test_imagenet_weights_with_fake_failed_download_raise_pretrained_weights_error(
    architecture: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_get_file(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- no network")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", fake_get_file)
    with pytest.raises(PretrainedWeightsError, match="model.pretrained_weights") as caught:
        _build(architecture, pretrained_weights="imagenet")
    assert "\n" not in str(caught.value)
    assert "URL fetch failure" in str(caught.value)


@pytest.mark.parametrize("architecture", TRANSFER)
def test_missing_weights_file_raises_clear_error(architecture: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(PretrainedWeightsError, match="no such weights file") as caught:
        _build(architecture, pretrained_weights=str(missing))
    assert str(missing) in str(caught.value)


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path: Path) -> None:
    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    source.save_weights(path)
    model = _build("EfficientNetB0Transfer", pretrained_weights=str(path))
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for expected, actual in zip(source.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_weights_file_that_does_not_fit_raises_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.weights.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        _build("EfficientNetB0Transfer", pretrained_weights=str(path))


def test_random_init_backbone_warns_that_it_is_not_transfer_learning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="stages.architectures"):
        _build("EfficientNetB0Transfer", pretrained_weights="none")
    assert any("NOT transfer learning" in record.getMessage() for record in caplog.records)


def test_scratch_architectures_ignore_pretrained_weights_setting() -> None:
    # The default params say "imagenet"; a from-scratch model must not try to download anything.
    model = _build("SimpleCNN", pretrained_weights="imagenet")
    assert model.name == "SimpleCNN"


def test_flip_averaged_model_runs_the_network_once_on_the_batch_and_its_mirror() -> None:
    model = _build("DeepGuardCNN")
    averaged = layers.with_flip_averaging(model)
    inner = averaged.get_layer(model.name)
    assert len(inner._inbound_nodes) == 1, "one call of the network, not one per view"
    assert inner._inbound_nodes[0].input_tensors[0].shape[0] is None
    stacked = keras.ops.convert_to_numpy(averaged.get_layer("mirror")(np.zeros((3, SIZE, SIZE, 3), "uint8")))
    assert stacked.shape == (6, SIZE, SIZE, 3)


def test_log_spectrum_layer_is_the_spectrum_the_features_stage_plots() -> None:
    from core.imagestats import log_spectrum

    for shape in ((3, SIZE, SIZE, 3), (2, 15, 17, 3)):  # odd sides: the centring shift rounds like fftshift
        pixels = np.random.default_rng(1).random(shape)
        ours = keras.ops.convert_to_numpy(layers.LogSpectrum()(pixels.astype("float32")))
        np.testing.assert_allclose(ours, log_spectrum(pixels), rtol=0, atol=1e-4)
    # Columns alternating 0/1: the mean (centre) and the highest horizontal frequency (left edge, centre row).
    stripes = np.tile((np.arange(SIZE) % 2).astype("float32")[None, :, None], (SIZE, 1, 3))[None]
    spectrum = keras.ops.convert_to_numpy(layers.LogSpectrum()(stripes))[0]
    assert {tuple(int(i) for i in peak) for peak in np.argwhere(spectrum > 1)} == {
        (SIZE // 2, 0),
        (SIZE // 2, SIZE // 2),
    }


def test_spectrum_branch_feeds_the_output_and_round_trips_flip_averaged(tmp_path: Path) -> None:
    from core.modelstore import load_keras

    plain, model = _build("SimpleCNN"), _build("SimpleCNN", spectrum_branch=True)
    assert model.get_layer("spectrum").output.shape[1:] == (SIZE, SIZE)
    assert model.count_params() == plain.count_params() + (SIZE * SIZE * 4 + (SIZE * SIZE + 1) * 64 + 64)
    images, _ = _batch(8, seed=2)
    before = model.predict(images, verbose=0)
    branch = model.get_layer("spectrum_dense")
    branch.set_weights([np.zeros_like(w) for w in branch.get_weights()])
    assert not np.allclose(model.predict(images, verbose=0), before, atol=1e-6), (
        "the branch reaches the output"
    )
    averaged = layers.with_flip_averaging(model)
    averaged.save(tmp_path / "model.keras")
    reloaded = load_keras(tmp_path / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), averaged.predict(images, verbose=0), rtol=0, atol=1e-6
    )


def test_spectrum_branch_runs_in_float32_under_mixed_precision() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _build("SimpleCNN", spectrum_branch=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("spectrum").dtype_policy.compute_dtype == "float32"
    scores = model.predict(_batch(4)[0], verbose=0)
    assert scores.dtype == np.float32 and np.all(np.isfinite(scores))


def _shifted(images: np.ndarray, dy: int, dx: int, reach: int) -> np.ndarray:
    """``images`` moved ``dy`` rows down and ``dx`` columns right, edges mirrored (``d c b a | a b c d``)."""
    padded = np.pad(images, ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="symmetric")
    side = images.shape[1]
    return padded[:, reach - dy : reach - dy + side, reach - dx : reach - dx + side]


def test_random_shift_moves_each_image_by_whole_pixels_within_its_reach_with_mirrored_edges() -> None:
    images = np.random.default_rng(0).random((400, 32, 32, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(layers.RandomShift(0.0625, seed=3)(images, training=True))
    shifts = []
    for image, moved in zip(images, out, strict=True):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(_shifted(image[None], dy, dx, 2)[0], moved)
        ]
        assert len(found) == 1, "not a whole-pixel shift of at most 2 (0.0625 of 32) each way"
        shifts.append(found[0])
    rows, counts = np.unique([dy for dy, _ in shifts], return_counts=True)
    # round(uniform(-2, 2)): every shift occurs, the two extremes half as often as the others.
    assert rows.tolist() == [-2, -1, 0, 1, 2]
    assert counts[0] + counts[-1] < counts[1] + counts[3]
    np.testing.assert_array_equal(layers.RandomShift(0.0625, seed=3)(images, training=False), images)


def test_random_shift_is_what_keras_random_translation_does_with_nearest_pixels_and_mirrored_edges() -> None:
    """The replaced layer, given the same translations in pixels, moves the image by their rounded values."""
    images = np.random.default_rng(1).random((1, 32, 32, 3)).astype("float32")
    keras_layer = keras.layers.RandomTranslation(0.0625, 0.0625, fill_mode="reflect", interpolation="nearest")
    for ty, tx in ((1.3, -0.4), (-1.7, 1.6), (0.2, -1.2), (1.9, 2.0)):
        transformation = {"translations": np.array([[tx, ty]], "float32"), "input_shape": images.shape}
        moved = keras_layer.transform_images(images, transformation, training=True)
        expected = _shifted(images, round(ty), round(tx), 2)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(moved), expected)


def test_translation_augmentation_is_a_random_shift_that_survives_saving(tmp_path: Path) -> None:
    model = _build("SimpleCNN", augmentation=FULL_AUGMENTATION)
    assert isinstance(model.get_layer("augment_translate"), layers.RandomShift)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras").get_layer("augment_translate")
    assert isinstance(reloaded, layers.RandomShift) and reloaded.factor == FULL_AUGMENTATION.translate
