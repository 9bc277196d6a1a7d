"""The small shared facts the trust, robustness and monitoring features agree on (core/)."""

from __future__ import annotations

import numpy as np
import pytest

from core.degrade import DEGRADATIONS, degrade, degraded_file
from core.imagestats import STAT_NAMES, high_frequency_mask, image_statistics, log_spectrum
from core.labels import verdicts
from core.modelstore import ModelMetadata


def test_verdict_bands_leave_an_uncertain_middle() -> None:
    assert verdicts(np.array([0.01, 0.2, 0.5, 0.8, 0.99]), 0.2, 0.8) == [
        "REAL",
        "REAL",
        "UNCERTAIN",
        "FAKE",
        "FAKE",
    ]


def test_metadata_without_bands_decides_at_the_threshold() -> None:
    old = {
        "threshold": 0.4,
        "image_size": 32,
        "architecture": "A",
        "data_source": "x",
        "synthetic_data": False,
    }
    metadata = ModelMetadata.from_dict(old)
    assert metadata.bands == (0.4, 0.4)
    assert verdicts(np.array([0.39, 0.4]), *metadata.bands) == ["REAL", "FAKE"]
    banded = ModelMetadata.from_dict({**old, "real_below": 0.1, "fake_above": 0.9, "temperature": 1.5})
    assert ModelMetadata.from_dict(banded.to_dict()) == banded
    assert banded.bands == (0.1, 0.9)


def test_degradations_give_model_size_images_and_blur_removes_high_frequencies() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(degrade(images, "clean"), images)
    hf = {name: image_statistics(degrade(images, name))["hf_energy"].mean() for name in DEGRADATIONS}
    assert hf["blur_1.0"] < hf["blur_0.6"] < hf["clean"]
    assert degraded_file(images[0], "upscale_4x")[:8] == b"\x89PNG\r\n\x1a\n"
    assert degraded_file(images[0], "jpeg_q50")[:2] == b"\xff\xd8"
    with pytest.raises(KeyError, match="unknown degradation 'sepia'"):
        degraded_file(images[0], "sepia")


def test_image_statistics_per_image() -> None:
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    stats = image_statistics(flat)
    assert tuple(stats) == STAT_NAMES
    np.testing.assert_allclose(stats["mean_r"], 128 / 255)
    np.testing.assert_allclose(stats["std_g"], 0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 32, 32, 3), (3, 31, 33, 3), (2, 64, 17, 3)])
def test_image_statistics_are_the_plain_definitions(shape: tuple[int, ...]) -> None:
    """The fast reductions give what the docstring defines: pixel means and deviations per channel, and the
    mean of the centred spectrum's outer band (odd sides too, where centring is not its own inverse)."""
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    pixels = images / 255.0
    band = log_spectrum(pixels)[:, high_frequency_mask(*shape[1:3])].mean(axis=1)
    expected = [*pixels.mean(axis=(1, 2)).T, *pixels.std(axis=(1, 2)).T, band]
    stats = image_statistics(images)
    for name, values in zip(STAT_NAMES, expected, strict=True):
        np.testing.assert_allclose(stats[name], values, rtol=1e-12, atol=1e-12, err_msg=name)
