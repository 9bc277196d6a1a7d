"""Compact per-image statistics: what the predictor records per served image and drift is measured on.

The same function describes the training/test reference (features stage, drift monitor) and the served
inputs (predictor), so the two distributions are comparable by construction.
"""

from __future__ import annotations

import functools

import numpy as np

# Luminance weights (ITU-R BT.601) of the spectrum.
LUMINANCE = np.array([0.299, 0.587, 0.114])
STAT_NAMES: tuple[str, ...] = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "hf_energy")


@functools.lru_cache(maxsize=8)
def high_frequency_mask(height: int, width: int) -> np.ndarray:
    """The outer band of a centred spectrum: radius beyond half the Nyquist radius (read-only, cached)."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.hypot(yy - height // 2, xx - width // 2) > min(height, width) / 4
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=8)
def _high_frequency_weights(height: int, width: int) -> np.ndarray:
    """``high_frequency_mask`` moved to an uncentred spectrum's layout, flattened, as weights summing to 1."""
    mask = np.fft.ifftshift(high_frequency_mask(height, width)).ravel()
    weights = mask / mask.sum()
    weights.setflags(write=False)
    return weights


def log_spectrum(pixels: np.ndarray, centred: bool = True) -> np.ndarray:
    """Centred log-magnitude 2-D spectrum ``log(1 + |FFT2|)`` of the luminance of images ``(N, H, W, 3)`` in
    [0, 1]: ``(N, H, W)``, zero frequency at ``(H // 2, W // 2)`` (at ``(0, 0)`` if not ``centred``).

    The one definition of "the spectrum": the features stage plots its class means, ``hf_energy`` reads its
    outer band, and the model's optional spectrum branch (``core.layers.LogSpectrum``) computes it in Keras.
    """
    spectrum = np.fft.fft2(pixels @ LUMINANCE)
    return np.log1p(np.abs(np.fft.fftshift(spectrum, axes=(1, 2)) if centred else spectrum))


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of uint8 images ``(N, H, W, 3)``.

    Returns:
        ``STAT_NAMES`` -> float64 ``(N,)``: per-channel mean and standard deviation of pixels scaled to
        [0, 1], and ``hf_energy``, the mean log-magnitude of the luminance spectrum in the outer band (where
        generator artifacts show and blur or resizing removes them).
    """
    pixels = np.asarray(images, dtype=np.float64) / 255.0
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3), got shape {pixels.shape}")
    # The predictor computes these for every request on its event loop, where numpy's mean and std over two
    # axes and boolean indexing cost twice these reductions (einsum, a dot with the band's weights) per image.
    count, height, width = pixels.shape[:3]
    flat = pixels.reshape(count, height * width, 3)
    means = np.einsum("npc->nc", flat) / (height * width)
    centred = flat - means[:, None, :]
    stds = np.sqrt(np.einsum("npc,npc->nc", centred, centred) / (height * width))
    spectrum = log_spectrum(pixels, centred=False).reshape(count, height * width)
    hf = spectrum @ _high_frequency_weights(height, width)
    columns = [*means.T, *stds.T, hf]
    return dict(zip(STAT_NAMES, columns, strict=True))
