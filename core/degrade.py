"""What the web does to images, by name: the robustness report's degradations and their upload files.

Each degradation turns a model-size uint8 image into the file a user would upload after it (a re-saved JPEG,
an enlarged PNG, ...). Scoring that file the way the predictor does (``core.imaging.decode_for_model``) gives
exactly what a deployed model sees. Evaluate's robustness report, the benches and the monitoring tests use
these names; training's random degradations reuse the same primitives.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from core.imaging import RESAMPLING, decode_for_model, resize


def jpeg(image: Image.Image, quality: int) -> bytes:
    """Re-encode as JPEG at ``quality`` (4:2:0 subsampling, as most web encoders do)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    """Encode losslessly."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rescale(image: Image.Image, factor: float, method: Image.Resampling = RESAMPLING) -> Image.Image:
    """Resize by ``factor`` (at least 1 pixel a side)."""
    width, height = image.size
    return resize(image, (max(1, round(width * factor)), max(1, round(height * factor))), method)


def blur(image: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur of ``radius`` pixels (Pillow's standard deviation)."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Add Gaussian noise of standard deviation ``sigma`` (in 0..255 units), seeded."""
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


# name -> (image, seed) -> the uploaded file. "upscale_4x" is an uploaded enlargement (bicubic, as image
# editors enlarge), which the predictor resizes back; "downscale_0.5x" loses detail and comes back at size.
DEGRADATIONS: dict[str, Callable[[Image.Image, int], bytes]] = {
    "clean": lambda image, seed: png(image),
    "jpeg_q90": lambda image, seed: jpeg(image, 90),
    "jpeg_q75": lambda image, seed: jpeg(image, 75),
    "jpeg_q50": lambda image, seed: jpeg(image, 50),
    "downscale_0.5x": lambda image, seed: png(resize(rescale(image, 0.5), image.size)),
    "upscale_4x": lambda image, seed: png(rescale(image, 4.0, Image.Resampling.BICUBIC)),
    "blur_0.6": lambda image, seed: png(blur(image, 0.6)),
    "blur_1.0": lambda image, seed: png(blur(image, 1.0)),
    "noise": lambda image, seed: png(noise(image, 8.0, seed)),
}


def degraded_file(image: np.ndarray, name: str, seed: int = 0) -> bytes:
    """The file a user would upload after degradation ``name`` of a uint8 ``(H, W, 3)`` image."""
    if name not in DEGRADATIONS:
        raise KeyError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name](Image.fromarray(np.asarray(image, dtype=np.uint8)), seed)


def degrade(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """What the predictor scores for each image after degradation ``name``: uint8 ``(N, H, W, 3)``.

    Image ``i`` gets seed ``seed + i`` (for noise), so a report is reproducible.
    """
    size = images.shape[1]
    return (
        np.stack(
            [decode_for_model(degraded_file(image, name, seed + i), size) for i, image in enumerate(images)]
        )
        if len(images)
        else np.asarray(images, dtype=np.uint8)
    )
