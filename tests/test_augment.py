"""Unit tests for stages.augment: each training degradation, CutMix, mixup, seeding, the tf.data pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core import degrade
from core.config import NO_DEGRADATIONS, DegradationParams
from core.imaging import decode_for_model, resize
from stages import augment
from stages.augment import augment_batch, degrade_images, training_dataset

SIZE = 32


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Smooth gradients with texture: JPEG, blur and resampling all visibly change them."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, SIZE)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2 + np.zeros((SIZE, SIZE, 3))
    return np.clip(base[None] + rng.normal(0, 25, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _only(name: str) -> DegradationParams:
    return NO_DEGRADATIONS.model_copy(update={name: 1.0})


def _rng() -> np.random.Generator:
    return np.random.default_rng(5)


def test_probability_zero_leaves_images_untouched() -> None:
    images = _images()
    np.testing.assert_array_equal(degrade_images(images, NO_DEGRADATIONS, _rng()), images)
    out, labels = augment_batch(images, np.arange(6) % 2, 3, NO_DEGRADATIONS, 0.0)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(labels, np.arange(6) % 2)


def test_jpeg_with_probability_one_is_the_predictors_decode_of_a_reencoded_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(augment, "JPEG_QUALITY", (60, 60))
    images = _images()
    out = degrade_images(images, _only("jpeg"), _rng())
    for image, got in zip(images, out, strict=True):
        np.testing.assert_array_equal(got, decode_for_model(degrade.jpeg(Image.fromarray(image), 60), SIZE))
        assert not np.array_equal(got, image)


def test_jpeg_quality_is_drawn_from_its_range() -> None:
    images = _images(4)
    out = degrade_images(images, _only("jpeg"), _rng())
    for image, got in zip(images, out, strict=True):
        candidates = (
            decode_for_model(degrade.jpeg(Image.fromarray(image), q), SIZE)
            for q in range(augment.JPEG_QUALITY[0], augment.JPEG_QUALITY[1] + 1)
        )
        assert any(np.array_equal(got, c) for c in candidates)


@pytest.mark.parametrize("method", augment.RESAMPLE_METHODS)
@pytest.mark.parametrize("factor", [0.5, 4.0])
def test_resample_goes_through_another_size_and_back_the_way_the_predictor_resizes(
    monkeypatch: pytest.MonkeyPatch, factor: float, method: Image.Resampling
) -> None:
    monkeypatch.setattr(augment, "RESAMPLE_FACTOR", (factor, factor))
    monkeypatch.setattr(augment, "RESAMPLE_METHODS", (method,))
    images = _images(3)
    out = degrade_images(images, _only("resample"), _rng())
    for image, got in zip(images, out, strict=True):
        resized = degrade.rescale(Image.fromarray(image), factor, method)
        assert resized.size == (round(SIZE * factor),) * 2
        np.testing.assert_array_equal(got, np.asarray(resize(resized, (SIZE, SIZE))))
        assert not np.array_equal(got, image)


def test_blur_smooths_and_noise_adds_zero_mean_noise_of_the_drawn_strength(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(augment, "BLUR_RADIUS", (1.0, 1.0))
    monkeypatch.setattr(augment, "NOISE_SIGMA", (6.0, 6.0))
    images = _images()
    blurred = degrade_images(images, _only("blur"), _rng())
    for image, got in zip(images, blurred, strict=True):
        np.testing.assert_array_equal(got, np.asarray(degrade.blur(Image.fromarray(image), 1.0)))
    rough = np.abs(np.diff(images.astype(float), axis=2)).mean()
    assert np.abs(np.diff(blurred.astype(float), axis=2)).mean() < rough / 2
    noisy = degrade_images(images, _only("noise"), _rng())
    difference = noisy.astype(float) - images
    assert abs(difference.mean()) < 0.5 and 5.0 < difference.std() < 7.0


@pytest.mark.parametrize("name", list(DegradationParams.model_fields))
def test_every_degradation_params_yaml_names_changes_the_training_images(name: str) -> None:
    """A probability added to ``augmentation.degradations`` (``DegradationParams``) validated and was logged,
    but ``degrade_images`` draws each degradation by hand: one it does not apply trained with nothing new."""
    images = _images()
    assert not np.array_equal(degrade_images(images, _only(name), _rng()), images), name


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images, labels = _images(8), np.arange(8) % 2
    all_of_them = DegradationParams(jpeg=0.5, resample=0.5, blur=0.5, noise=0.5)
    first = augment_batch(images, labels, 11, all_of_them, 0.4, 0.5)
    second = augment_batch(images, labels, 11, all_of_them, 0.4, 0.5)
    other = augment_batch(images, labels, 12, all_of_them, 0.4, 0.5)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_mixup_blends_images_and_labels_with_the_same_weights() -> None:
    images = np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in (0, 200, 0, 200)])
    labels = np.array([0, 1, 0, 1])
    out, mixed = augment_batch(images, labels, 4, NO_DEGRADATIONS, 0.4)
    assert mixed.dtype == np.float32 and not set(mixed.tolist()) <= {0.0, 1.0}
    # A plain image of value v stays plain; with REAL=0 and FAKE=200 its value is 200 * its label.
    np.testing.assert_allclose(out[:, 0, 0, 0], 200 * mixed, atol=0.51)
    assert np.all(out == out[:, :1, :1, :1])


def _plain(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of one value each (10, 20, ...) and alternating labels: a pasted square shows by its value."""
    values = 10 * np.arange(1, count + 1, dtype=np.uint8)
    return np.ones((count, SIZE, SIZE, 3), np.uint8) * values[:, None, None, None], np.arange(count) % 2


def test_cutmix_pastes_a_square_of_another_image_and_mixes_the_labels_by_its_area() -> None:
    images, labels = _plain(16)
    out, mixed = augment_batch(images, labels, 7, NO_DEGRADATIONS, 0.0, 1.0)
    patched = 0
    for i in range(16):
        pasted = out[i, :, :, 0] != images[i, 0, 0, 0]
        if not pasted.any():
            assert mixed[i] == labels[i]
            continue
        patched += 1
        rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
        assert len(rows) == len(cols) and pasted.sum() == len(rows) ** 2, "one square"
        value = out[i, rows[0], cols[0], 0]
        assert np.all(out[i][pasted] == value), "from one image, as it was before any paste"
        partner = list(images[:, 0, 0, 0]).index(value)
        share = pasted.mean()
        np.testing.assert_allclose(mixed[i], (1 - share) * labels[i] + share * labels[partner], rtol=1e-6)
    # Every image is chosen; a draw of a tiny square or of itself may leave one as it was.
    assert patched >= 12
    np.testing.assert_array_equal(augment_batch(images, labels, 7, NO_DEGRADATIONS, 0.0, 0.0)[0], images)


@pytest.mark.parametrize("source", ["tf.data", "stream"])
def test_cutmix_alone_turns_the_augmenting_pipeline_on(source: str) -> None:
    images, labels = _plain(8)
    recipe = {"batch_size": 8, "seed": 1, "degradations": NO_DEGRADATIONS, "mixup_alpha": 0.0, "cutmix": 1.0}
    if source == "tf.data":
        _, mixed = next(iter(training_dataset(images, labels, **recipe)))
        mixed = mixed.numpy()
    else:
        stream = augment.batch_stream(images, labels, workers=1, **recipe)
        _, mixed = next(stream)
        stream.close()
    assert not set(mixed.tolist()) <= {0.0, 1.0}, "labels mixed by area"


def test_training_dataset_shuffles_every_image_once_per_epoch_reproducibly() -> None:
    images = _images(20)
    labels = np.arange(20) % 2
    params = {
        "batch_size": 8,
        "degradations": DegradationParams(jpeg=0.5, resample=0.0, blur=0.0, noise=0.0),
        "mixup_alpha": 0.0,
    }
    dataset = training_dataset(images, labels, seed=3, **params)
    epochs = [[(x.numpy(), y.numpy()) for x, y in dataset] for _ in range(2)]
    again = [(x.numpy(), y.numpy()) for x, y in training_dataset(images, labels, seed=3, **params)]
    assert [len(y) for _, y in epochs[0]] == [8, 8, 4]
    assert sorted(np.concatenate([y for _, y in epochs[0]]).tolist()) == sorted(labels.tolist())
    for (x1, y1), (x2, y2) in zip(epochs[0], again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0]), "each epoch reshuffles and redraws"
    assert epochs[0][0][0].dtype == np.uint8


def _two_passes(
    source: str, images: np.ndarray, labels: np.ndarray, tail: augment.DegradationTail | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Six batches of 8 of 20 images, as the fit reads them: the endless tf.data pipeline or the stream."""
    recipe = {
        "batch_size": 8,
        "seed": 3,
        "degradations": DegradationParams(jpeg=0.5, resample=0.3, blur=0.0, noise=0.0),
        "mixup_alpha": 0.0,
        "tail": tail,
    }
    if source == "tf.data":
        dataset = training_dataset(images, labels, endless=True, **recipe)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(6)]
    stream = augment.batch_stream(images, labels, workers=int(source.split()[0]), **recipe)
    batches = [next(stream) for _ in range(6)]
    stream.close()
    return batches


@pytest.mark.parametrize(
    ("source", "again_from"), [("tf.data", "tf.data"), ("1 worker", "2 workers")], ids=["tf.data", "stream"]
)
def test_endless_training_batches_are_one_pass_per_epoch_reproducibly(source: str, again_from: str) -> None:
    """Both inputs of the fit (steps_per_epoch over endless batches): each pass every image once, redrawn.

    TensorFlow reads the repeated tf.data pipeline; JAX and torch the worker stream, whose batches do not
    depend on how many workers augment them.
    """
    images, labels = _images(20), np.arange(20) % 2
    first, again = _two_passes(source, images, labels), _two_passes(again_from, images, labels)
    assert [len(y) for _, y in first] == [8, 8, 4, 8, 8, 4]
    for start in (0, 3):
        seen = np.concatenate([y for _, y in first[start : start + 3]])
        assert sorted(seen.tolist()) == sorted(labels.tolist())
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert first[0][0].dtype == np.uint8 and first[0][1].dtype == np.float32
    assert not np.array_equal(first[0][0], first[3][0]), "each pass reshuffles and redraws"
    kept = _as_they_are(first[:3], images)
    assert 0 < sum(kept) < len(kept), "some images degraded, the others as they were"


def test_the_degradation_tail_is_the_last_fraction_of_the_planned_epochs_and_moves_with_the_plan() -> None:
    chances = DegradationParams(jpeg=0.2, resample=0.4, blur=0.3, noise=0.1)
    tail = augment.DegradationTail(fraction=0.2, scale=0.5)
    assert tail.at(chances, 10**6) == chances, "no plan yet: no tail"
    tail.plan(epochs=60, steps_per_epoch=10)
    assert (tail.first_epoch, tail.start) == (49, 480)
    assert tail.at(chances, 479) == chances
    assert tail.at(chances, 480) == DegradationParams(jpeg=0.1, resample=0.2, blur=0.15, noise=0.05)
    tail.plan(epochs=40, steps_per_epoch=10)  # the time budget re-planned
    assert (tail.first_epoch, tail.start) == (33, 320) and tail.at(chances, 320).resample == 0.2
    tail.plan(epochs=2, steps_per_epoch=10)  # 0.4 of an epoch: no tail
    assert tail.first_epoch is None and tail.at(chances, 19) == chances
    unchanged = augment.DegradationTail(fraction=0.5, scale=1.0)
    unchanged.plan(epochs=10, steps_per_epoch=10)
    assert unchanged.first_epoch is None


def _as_they_are(batches: list[tuple[np.ndarray, np.ndarray]], images: np.ndarray) -> list[bool]:
    """For each image of ``batches``: whether it is one of ``images`` unchanged."""
    return [any(np.array_equal(x, image) for image in images) for batch, _ in batches for x in batch]


@pytest.mark.parametrize("source", ["tf.data", "1 worker"], ids=["tf.data", "stream"])
def test_the_fits_batches_lose_their_degradations_from_the_tails_first_batch(source: str) -> None:
    """A tail of scale 0 over the second of two planned passes: the first pass as without a tail, the second
    with every image as it is (reshuffled: the same shuffle as without the tail)."""
    images, labels = _images(20), np.arange(20) % 2
    tail = augment.DegradationTail(fraction=0.5, scale=0.0)
    tail.plan(epochs=2, steps_per_epoch=3)
    with_tail, without = _two_passes(source, images, labels, tail), _two_passes(source, images, labels)
    for (x1, y1), (x2, y2) in zip(with_tail[:3], without[:3], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert all(_as_they_are(with_tail[3:], images))
    assert not all(_as_they_are(without[3:], images)), "without the tail the second pass is degraded"


def test_batch_stream_without_augmentation_keeps_the_images_and_starts_no_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(augment, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("started workers"))
    images, labels = _images(10), np.arange(10) % 2
    stream = augment.batch_stream(
        images, labels, batch_size=4, seed=0, degradations=NO_DEGRADATIONS, mixup_alpha=0.0, shuffle=False
    )
    batches = [next(stream) for _ in range(4)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches[:3]]), images)
    np.testing.assert_array_equal(batches[3][0], images[:4])  # endless: the next pass starts again
