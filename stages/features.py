"""Stage 3, features: normalisation statistics, the augmentation policy and the frequency-domain fingerprint.

Train consumes ``data/features/features.json`` (per-channel mean and variance, baked into the model's
Normalization layer, and the augmentation policy its training-only layers apply on the fly: no augmented
copies on disk). The per-class mean log-magnitude spectrum shows where generator artifacts live (high
frequencies) and is saved as ``spectrum.npz`` and the figure ``reports/figures/spectrum.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from core.atomic import atomic_path, write_json
from core.cli import run_stage, stage_parser
from core.config import Params
from core.imagestats import high_frequency_mask, log_spectrum
from core.labels import CLASS_NAMES
from core.pipeline import FEATURES_DIR, FEATURES_FILE, PROCESSED_DIR, SPECTRUM_FIGURE
from stages.figures import plt, save_figure
from stages.shards import load_split

log = logging.getLogger(__name__)

CHUNK = 4096


def channel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and variance of uint8 images scaled to [0, 1], streamed in chunks."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), CHUNK):
        chunk = np.asarray(images[start : start + CHUNK], dtype=np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += np.square(chunk).sum(axis=(0, 1, 2))
    pixels = len(images) * images.shape[1] * images.shape[2]
    mean = total / pixels
    variance = squares / pixels - np.square(mean)
    return mean.tolist(), variance.tolist()


def log_spectra(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean centred log-magnitude 2-D spectrum of the luminance, per class: ``(classes, H, W)``."""
    height, width = images.shape[1:3]
    sums = np.zeros((len(CLASS_NAMES), height, width))
    counts = np.zeros(len(CLASS_NAMES))
    for start in range(0, len(images), CHUNK):
        spectrum = log_spectrum(np.asarray(images[start : start + CHUNK], dtype=np.float64) / 255.0)
        chunk_labels = np.asarray(labels[start : start + CHUNK])
        for label in range(len(CLASS_NAMES)):
            sums[label] += spectrum[chunk_labels == label].sum(axis=0)
            counts[label] += np.count_nonzero(chunk_labels == label)
    return sums / np.maximum(counts, 1)[:, None, None]


def high_frequency_energy(spectrum: np.ndarray) -> float:
    """Mean log-magnitude in the outer band (radius > half the Nyquist radius) of a centred spectrum."""
    return float(spectrum[high_frequency_mask(*spectrum.shape)].mean())


def plot_spectra(spectra: np.ndarray) -> plt.Figure:
    """REAL, FAKE and FAKE - REAL mean spectra side by side."""
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = [*spectra, spectra[1] - spectra[0]]
    titles = [f"{CLASS_NAMES[0]} mean log |FFT|", f"{CLASS_NAMES[1]} mean log |FFT|", "FAKE - REAL"]
    for axis, panel, title in zip(axes, panels, titles, strict=True):
        image = axis.imshow(panel, cmap="RdBu_r" if title.startswith("FAKE -") else "viridis")
        axis.set_title(title)
        axis.axis("off")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle("Luminance spectrum of the training images (centre = low frequencies)")
    return figure


def run(params: Params) -> dict:
    """Run features in the current workspace.

    Returns:
        The content of features.json.
    """
    images, labels = load_split(PROCESSED_DIR, "train")
    log.info("features: statistics over %d training images", len(images))
    mean, variance = channel_statistics(images)
    spectra = log_spectra(images, labels)
    features = {
        "count": int(len(images)),
        "mean": mean,
        "variance": variance,
        "augmentation": params.augmentation.model_dump(),
        "high_frequency_energy": {
            name: high_frequency_energy(spectra[i]) for i, name in enumerate(CLASS_NAMES)
        },
    }
    with atomic_path(FEATURES_DIR) as tmp:
        tmp.mkdir()
        np.savez(tmp / "spectrum.npz", **{name: spectra[i] for i, name in enumerate(CLASS_NAMES)})
        write_json(tmp / FEATURES_FILE, features)
    save_figure(plot_spectra(spectra), SPECTRUM_FIGURE)
    log.info(
        "features done: mean %s, high-frequency energy %s",
        np.round(mean, 4).tolist(),
        {k: round(v, 4) for k, v in features["high_frequency_energy"].items()},
    )
    return features


def _main(args: argparse.Namespace, params: Params) -> None:
    run(params)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m stages.features``."""
    return run_stage("features", _main, stage_parser("features", __doc__.splitlines()[0]), argv)


if __name__ == "__main__":
    sys.exit(main())
